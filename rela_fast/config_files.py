"""Run files: a run's settings and inputs as one YAML/JSON document (``--config``, ``--print-config``).

The document is the :class:`~rela_fast.train.config.ReLAConfig` as a nested mapping plus the run's inputs
(``data``, ``targets``, ``out``) at the top level. ``--print-config`` prints it as JSON (which is also YAML), every
run writes it as ``config.json`` next to its results, and ``--config FILE`` reads it back, so a printed or
written config re-creates the same run. An unknown key or a bad value is one line naming the key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rela_fast.errors import UserError

if TYPE_CHECKING:
    from rela_fast.train.config import ReLAConfig

INPUT_KEYS = ("data", "targets", "out")
MAX_CONFIG_BYTES = 1 << 20  # a run file is a few KiB; refuse to read a huge file by mistake


def read_run_file(path: str | os.PathLike) -> tuple[ReLAConfig, dict[str, Any]]:
    """``(config, inputs)`` from a YAML or JSON file; inputs are the ``data``/``targets``/``out`` keys given."""
    from rela_fast.train.config import ReLAConfig

    data = _read_mapping(path)
    inputs = {k: data.pop(k) for k in INPUT_KEYS if k in data}
    for key, value in inputs.items():
        if value is not None and not isinstance(value, str):
            raise UserError(f"--config {path}: {key}={value!r}: expected a path")
    return ReLAConfig.from_dict(data, where=f"--config {path}"), {k: v for k, v in inputs.items() if v}


def _parse(text: str, path: Any) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        import yaml
    except ImportError:
        raise UserError(f"--config {path}: not JSON, and YAML needs PyYAML (`pip install pyyaml`)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"--config {path}: not valid YAML or JSON{where}") from None


def dump_run(config: ReLAConfig, inputs: dict[str, Any]) -> str:
    """The document :func:`read_run_file` reads back into the same config and inputs (JSON, valid YAML)."""
    doc = {k: str(inputs[k]) for k in INPUT_KEYS if inputs.get(k) is not None}
    doc.update(config.to_dict())
    return json.dumps(doc, indent=1)


# -- flag files: a subcommand's flags as a mapping (`rela-fast convert --config FILE`) -----------------------------
def expand_flag_file(argv: list[str], keys: tuple[str, ...]) -> list[str]:
    """``argv`` with ``--config FILE``'s settings put in front as flags, so flags given on the command line
    (which come later) override the file. A key outside ``keys`` is one line naming it; values are checked
    by the subcommand's own flag parser, so the file accepts exactly what the flags accept."""
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        return argv
    i = next(i for i, a in enumerate(argv) if a == "--config" or a.startswith("--config="))
    path = argv[i].partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
    if not path:
        raise UserError("--config: give a YAML or JSON file of settings")
    data = _read_mapping(path)
    unknown = sorted(str(k) for k in data if k not in keys)
    if unknown:
        raise UserError(f"--config {path}: unknown setting {unknown[0]}; known: {', '.join(keys)}")
    front: list[str] = []
    for key, value in data.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            front += [flag] if value else []
        elif value is not None:
            if isinstance(value, dict | list):
                raise UserError(f"--config {path}: {key}={value!r}: expected a single value")
            front += [flag, str(value)]
    return argv[:1] + front + argv[1:]


def _read_mapping(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file; give a YAML or JSON file of settings")
    if p.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"--config {path}: {p.stat().st_size} bytes is not a settings file (limit 1 MiB)")
    data = _parse(p.read_bytes().decode("utf-8", errors="replace"), path)
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected a mapping of settings at the top, got {type(data).__name__}")
    return data
