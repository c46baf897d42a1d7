"""``rela-fast train``: ReLA-F training (or the plain method on the same dynamic subset without --targets)."""

from __future__ import annotations

import argparse
import math

from rela_fast.cli.aliases import add_deprecated_alias
from rela_fast.cli.validate import out_path
from rela_fast.config_files import dump_run
from rela_fast.errors import UserError
from rela_fast.train.config import ReLAConfig, add_config_arguments, config_from_args

HELP = "train a backbone with ReLA-F on converted targets (without --targets: the plain method, the baseline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", nargs="?", help="training images: folder, file list, tar shards, IDX folder "
                        "(Fashion-MNIST); may come from --config instead")
    parser.add_argument("--targets", help="target store from `rela-fast convert` (omit for the plain method)")
    parser.add_argument("--out", type=out_path, help="run directory: checkpoint.pt, metrics.jsonl/png, summary.json, "
                        "config.json (required, here or in --config)")
    parser.add_argument("--config", metavar="FILE", help="a run's settings as YAML or JSON (e.g. a run's config.json "
                        "or --print-config's output); flags given here override it")
    parser.add_argument("--print-config", action="store_true", help="print the full resolved config and exit")
    parser.add_argument("--continue", dest="continue_run", metavar="RUN", help="train the run in folder RUN further: "
                        "its own config.json with a new --epochs (or --max-steps); nothing else may change")
    parser.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. hidden_dim=512 proj_dim=128 temperature=0.2 (repeatable)")
    add_config_arguments(parser)
    add_deprecated_alias(parser, "--loader", "--views", "runtime__views", choices=["auto", "tensor", "torch", "dali"])
    parser.add_argument("--per-sample-augment", dest="runtime__batched_augment", action="store_false", default=None,
                        help="torchvision per sample on the workers (same as --no-batched-augment)")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint "
                        "(only a checkpoint this run's folder owns is replaced)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines")
    add_deprecated_alias(parser, "--no-progress", "--quiet", "quiet", flag=True)
    parser.add_argument("--logger", type=_logger_names, default=[], metavar="NAMES",
                        help="also log to tensorboard (<out>/tensorboard), csv (<out>/metrics.csv) and/or wandb "
                        "(offline unless WANDB_MODE is set; <out>/wandb), comma-separated")


def _logger_names(text: str) -> list[str]:
    from rela_fast.train.loggers import parse_loggers

    try:
        return parse_loggers(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve(args: argparse.Namespace) -> tuple[ReLAConfig, dict]:
    """The run's config (defaults < --config file < flags) and its inputs (data, targets, out)."""
    from rela_fast.config_files import read_run_file

    if args.continue_run is not None:
        return _continued(args)
    base, inputs = (ReLAConfig(), {}) if args.config is None else read_run_file(args.config)
    config = config_from_args(args, base)
    if args.method_arg:
        config = config.replace(method_kwargs={**config.method_kwargs,
                                               **_method_kwargs(args.method_arg, config.method)})
    elif config.method_kwargs:
        _method_kwargs([f"{k}={v}" for k, v in config.method_kwargs.items()], config.method)
    if args.quiet or args.config is None:  # a bar by default on the command line; a config file keeps its own
        config = config.replace(**{"runtime.progress": not args.quiet})
    if config.arch is None:
        config = config.replace(arch="resnet18")
    for key in ("data", "targets", "out"):
        if getattr(args, key) is not None:
            inputs[key] = getattr(args, key)
    if not inputs.get("data"):
        raise UserError("data: give the training images (positional DATA, or `data:` in --config)")
    if not inputs.get("out"):
        raise UserError("--out: give the run directory (or `out:` in --config)")
    return config, inputs


def _continued(args: argparse.Namespace) -> tuple[ReLAConfig, dict]:
    """``--continue RUN``: the run's own config with new epochs / max_steps; any other change is refused."""
    from pathlib import Path

    from rela_fast.config_files import read_run_file
    from rela_fast.train.config import walk

    run = Path(args.continue_run)
    if args.config is not None or args.out is not None:
        raise UserError("--continue: the run's folder holds its config and is its output; drop --config and --out")
    if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
        raise UserError(f"--continue {run}: no config.json and checkpoint.pt there; give the --out folder of a "
                        "`rela-fast train` run")
    base, inputs = read_run_file(run / "config.json")
    config = config_from_args(args, base)
    allowed = {"epochs", "max_steps"} | {k for k, f, _ in walk(config) if not f.metadata.get("resume", True)}
    before = dict((k, v) for k, _, v in walk(base))
    changed = [k for k, _, v in walk(config) if before[k] != v and k not in allowed]
    if changed or args.method_arg:
        raise UserError(f"--continue {run}: only --epochs and --max-steps (and how it runs) may change, not "
                        f"{(changed or ['--method-arg'])[0]}; start a new run for other settings")
    if config.epochs < base.epochs:
        raise UserError(f"--continue {run}: --epochs {config.epochs} is fewer than the run's {base.epochs}")
    for key in ("data", "targets"):
        if getattr(args, key) is not None:
            inputs[key] = getattr(args, key)
    inputs["out"] = str(run)
    return config.replace(**{"runtime.progress": not args.quiet}), inputs


def _method_kwargs(items: list[str], method: str) -> dict:
    """``--method-arg KEY=VALUE`` items as keyword arguments of the method's constructor (checked)."""
    import inspect

    from rela_fast.errors import UserError
    from rela_fast.train.methods import METHODS

    cls = METHODS.get(method.lower())
    params = {} if cls is None else dict(inspect.signature(cls.__init__).parameters)
    allowed = [n for n, p in params.items() if n not in ("self", "feature_dim", "in_dim", "num_classes")
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UserError(f"--method-arg {item!r}: expected KEY=VALUE, e.g. hidden_dim=512")
        if cls is not None and key not in allowed:
            raise UserError(f"--method-arg {item!r}: {method} has no option {key!r}; "
                            f"its options are {', '.join(allowed) or 'none'}")
        out[key] = _method_value(item, key, value)
    return out


def _method_value(item: str, key: str, value: str) -> int | float | str:
    from rela_fast.errors import UserError

    try:
        number: int | float = int(value)
    except ValueError:
        try:
            number = float(value)
        except ValueError:
            return value
    if not math.isfinite(number):
        raise UserError(f"--method-arg {item!r}: {value} is not a finite number")
    if key.endswith("_dim") and not (isinstance(number, int) and 1 <= number <= 65536):
        raise UserError(f"--method-arg {item!r}: {key} must be a whole number in [1, 65536]")
    if not key.endswith("_dim") and number < 0:
        raise UserError(f"--method-arg {item!r}: {key} must not be negative")
    return number


def run(args: argparse.Namespace) -> int:
    import torch

    from rela_fast.cli.validate import check_device, check_run_dir
    from rela_fast.train import ReLATrainer

    config, inputs = resolve(args)
    if args.print_config:
        print(dump_run(config, inputs))
        return 0
    check_run_dir(inputs["out"])
    config = config.replace(**{"runtime.device": check_device(config.runtime.device)})
    from rela_fast.train.loggers import make_loggers

    trainer = ReLATrainer(config.arch, config.method, inputs.get("targets"), config=config, out=inputs["out"],
                          callbacks=make_loggers(args.logger))
    if args.continue_run is not None and args.no_resume:
        raise UserError("--continue: continues from the run's checkpoint; drop --no-resume")
    result = trainer.fit(inputs["data"], resume=not args.no_resume, extend=args.continue_run is not None)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return 0
    h = result.handover
    if h["mode"] == "off":
        switch = "no ReLA (plain method)"
    elif h["switch_step"] is None:
        switch = f"never (rho {h['rho']:.4f} < {h['threshold']})" if h["mode"] == "adaptive" else "not reached"
    else:
        switch = f"step {h['switch_step']} (epoch {h['switch_epoch']})"
    ips = result.images_seen / result.wall_time if result.wall_time > 0 else float("nan")
    acc = f"{result.online_accuracy:.4f}" if result.online_accuracy is not None else "n/a (no labels)"
    print(f"trained     {result.steps} steps / {result.extra['total_steps']} ({result.epochs} epochs of "
          f"{result.extra['steps_per_epoch']} steps), {result.images_seen} images, budget {config.subset.budget}")
    print(f"wall time   {result.wall_time:.1f} s ({ips:.1f} images/s) on {trainer.device}"
          f"{' x' + str(trainer.world) if trainer.world > 1 else ''}, torch {torch.__version__}")
    print(f"hand-over   {switch}")
    print(f"online acc  {acc}")
    print(f"run         {result.out}: checkpoint.pt, metrics.jsonl, metrics.png, summary.json")
    print(f"next        rela-fast eval {result.out} --data {inputs['data']}")
    return 0
