"""ConvertSettings: every knob of one conversion, validated once (bad values are one-line UserErrors)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from rela_fast.errors import UserError
from rela_fast.paths import output_problem

ON_ERROR = ("skip", "fail")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MAX_SIZE = 4096  # S x S x 3 bytes per image: 4096 is 50 MB, already far beyond any prior's input size
WORK_SUFFIX = ".work"


@dataclass(frozen=True)
class ConvertSettings:
    """What :func:`rela_fast.convert` was asked to do, checked; ``size``/``dim`` None = the prior's."""

    out: Path
    size: int | None = None
    dim: int | None = None
    batch_size: int = 128
    shard_size: int = 4096  # a multiple of batch_size: batches never straddle two shards
    decoder: str = "auto"
    device: str | None = None
    on_error: str = "skip"
    progress: bool = True
    overwrite: bool = False
    keep_features: bool = False
    precision: str = "auto"
    compile: bool = False
    cuda_graph: bool | None = None
    num_threads: int | None = None
    verify_content: bool = False

    @property
    def work(self) -> Path:
        """``<out>.work``: the feature shards (marked as ours, see :mod:`rela_fast.ownership`)."""
        return self.out.with_name(self.out.name + WORK_SUFFIX)

    @property
    def key_mode(self) -> str:
        return "content" if self.verify_content else "stat"

    @classmethod
    def create(cls, out: str | os.PathLike, **values) -> ConvertSettings:
        """Validate and normalise; raises UserError naming the first bad value (as its CLI option)."""
        if values.get("on_error", "skip") not in ON_ERROR:
            raise UserError(f"--on-error {values['on_error']!r}: must be one of {', '.join(ON_ERROR)}")
        if values.get("precision", "auto") not in PRECISIONS:
            raise UserError(f"--precision {values['precision']!r}: must be one of {', '.join(PRECISIONS)}")
        batch = _positive("--batch-size", values.get("batch_size", 128))
        shard = _positive("--shard-size", values.get("shard_size", 4096))
        values["batch_size"], values["shard_size"] = batch, -(-shard // batch) * batch
        if values.get("size") is not None:
            values["size"] = _positive("--size", values["size"], "a positive number of pixels")
            if values["size"] > MAX_SIZE:
                raise UserError(f"--size {values['size']}: at most {MAX_SIZE} pixels; priors take 32 to 518")
        if values.get("dim") is not None:
            values["dim"] = _positive("--dim", values["dim"])
        if values.get("num_threads") is not None:
            values["num_threads"] = _positive("--threads", values["num_threads"],
                                              "at least 1 (or leave it out: all cores)")
        return cls(out=check_out_path(out), **values)


def _positive(option: str, value, what: str = "at least 1") -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{option} {value!r}: must be an integer, {what}") from None
    if number != value or number < 1:
        raise UserError(f"{option} {value}: must be {what}")
    return number


def check_out_path(out: str | os.PathLike) -> Path:
    """``--out`` must name a folder that can be made here: not empty, not ``/``, not the current folder or
    one above it, not the home folder, not under /proc, /sys or /dev, not below a file, and writable."""
    text = os.fspath(out) if isinstance(out, os.PathLike) else str(out)
    problem = output_problem(text)
    if problem is not None:
        raise UserError(f"--out {text!r}: {problem}")
    path = Path(text).expanduser()
    full = path.resolve()
    here = Path.cwd().resolve()
    if full == here or full in here.parents or full == Path.home().resolve():
        raise UserError(f"--out {text}: is the current folder, one above it or the home folder; "
                        "give a new folder for the target store, such as --out ./targets")
    if full.exists() and not full.is_dir():
        raise UserError(f"--out {text}: is a file, not a folder; give a folder for the target store")
    existing = full.parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"--out {text}: {existing} is a file, not a folder; give a folder for the target store")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {text}: cannot write in {existing} (read-only or no permission); "
                        "choose a folder you can write to")
    from rela_fast.outputs import normalize_out

    return normalize_out(path)  # `newdir/..` names the folder it means, and no empty newdir/ is made on the way
