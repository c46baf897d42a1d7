"""``rela-fast train``: ReLA-F training (or the plain method on the same dynamic subset without --targets)."""

from __future__ import annotations

import argparse
import math

from rela_fast.cli.validate import MAX_IMAGE_SIZE, device, fraction, integer, out_path, real

HELP = "train a backbone with ReLA-F on converted targets (without --targets: the plain method, the baseline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="training images: folder, file list, tar shards, IDX folder (Fashion-MNIST)")
    parser.add_argument("--targets", help="target store from `rela-fast convert` (omit for the plain method)")
    parser.add_argument("--out", required=True, type=out_path,
                        help="run directory: checkpoint.pt, metrics.jsonl/png, summary.json")
    parser.add_argument("--method", default="byol", help="byol (reference), simclr, dino or supervised")
    parser.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. hidden_dim=512 proj_dim=128 temperature=0.2 (repeatable)")
    parser.add_argument("--arch", default="resnet18", help="'convnet[-W]' (small, CPU) or any timm model name")
    parser.add_argument("--epochs", type=integer(1), default=100)
    parser.add_argument("--budget", type=real(0.0, 1.0, lo_open=True), default=1.0,
                        help="fraction of a full run's steps, in (0, 1]")
    parser.add_argument("--policy", default="random", help="subset policy: random (reference), topk, bottomk, "
                        "weighted, infobatch")
    parser.add_argument("--stratify", action="store_true", help="class-stratified subsets (labelled data)")
    parser.add_argument("--recipe", default="default", choices=["default", "authors"],
                        help="authors: frozen random transfer head, constant lr, weight decay 0.01 on all parameters, "
                        "BYOL momentum fixed at 0.99, batch 128 (each overridable below)")
    parser.add_argument("--prune-ratio", type=real(0.0, 1.0, hi_open=True), default=0.5,
                        help="infobatch: each below-mean sample is dropped with this probability (default 0.5)")
    parser.add_argument("--batch-size", type=integer(1), help="per process and micro-step (default 256; authors 128)")
    parser.add_argument("--accumulate", type=integer(1), default=1, help="gradient-accumulation micro-steps")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "lars"])
    parser.add_argument("--lr", type=real(0.0, lo_open=True), help="default 1e-3 (both recipes)")
    parser.add_argument("--weight-decay", type=real(0.0), help="default 1e-6 on weights only; authors 0.01 on all")
    parser.add_argument("--schedule", choices=["cosine", "constant"],
                        help="lr schedule (default cosine; authors constant)")
    parser.add_argument("--freeze-head", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the transfer head a fixed random projection (authors) or train it (default)")
    parser.add_argument("--decay-all", action=argparse.BooleanOptionalAction, default=None,
                        help="weight decay on biases and norms too (authors)")
    parser.add_argument("--warmup", type=fraction, default=0.0, help="fraction of the steps for linear LR warm-up")
    parser.add_argument("--handover", default="adaptive", choices=["adaptive", "constant"])
    parser.add_argument("--lambda-const", type=real(0.0, 1.0),
                        help="constant hand-over: phase 1 for this fraction of epochs")
    parser.add_argument("--soft-steps", type=integer(0), default=0,
                        help="blend the losses over N steps after the switch")
    parser.add_argument("--warm-heads", type=integer(0), default=0,
                        help="after the switch, train only the method's heads for N steps (backbone unchanged)")
    parser.add_argument("--image-size", type=integer(8, MAX_IMAGE_SIZE),
                        help="training side (default: the images' side if <= 64, else 224)")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--device", type=device, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--workers", type=integer(0, 256), default=0, help="data-loader worker processes")
    parser.add_argument("--views", "--loader", dest="views", default="auto",
                        choices=["auto", "tensor", "torch", "dali"],
                        help="where the two views come from: auto (in-memory tensors for IDX/arrays and data that "
                        "fits in RAM, DALI on CUDA, else a DataLoader)")
    parser.add_argument("--per-sample-augment", action="store_true",
                        help="torchvision per sample on the workers instead of batched photometric ops")
    parser.add_argument("--seed", type=integer(0, 2**32 - 1), default=0)
    parser.add_argument("--checkpoint-every", type=integer(1),
                        help="also checkpoint every N steps (always at epoch ends)")
    parser.add_argument("--max-steps", type=integer(1), help="stop after N optimisation steps")
    parser.add_argument("--log-every", type=integer(1), default=1, help="metrics row every N steps")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true")


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

    check_run_dir(args.out)
    kwargs = _method_kwargs(args.method_arg, args.method)
    trainer = ReLATrainer(
        args.arch, args.method, args.targets, budget=args.budget, epochs=args.epochs, subset_policy=args.policy,
        recipe=args.recipe, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, schedule=args.schedule, freeze_head=args.freeze_head, decay_all=args.decay_all,
        subset_kwargs={"prune_ratio": args.prune_ratio} if args.policy.startswith("infobatch") else None,
        warmup=args.warmup, handover=args.handover, lambda_const=args.lambda_const, soft_steps=args.soft_steps,
        warm_heads=args.warm_heads,
        image_size=args.image_size, accumulate=args.accumulate, amp=args.amp, compile=args.compile,
        device=check_device(args.device), num_workers=args.workers, views=args.views, seed=args.seed, out=args.out,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, max_steps=args.max_steps,
        method_kwargs=kwargs, stratify=args.stratify,
        batched_augment=not args.per_sample_augment, progress=not args.no_progress,
    )
    result = trainer.fit(args.data, resume=not args.no_resume)
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
          f"{result.extra['steps_per_epoch']} steps), {result.images_seen} images, budget {args.budget}")
    print(f"wall time   {result.wall_time:.1f} s ({ips:.1f} images/s) on {trainer.device}"
          f"{' x' + str(trainer.world) if trainer.world > 1 else ''}, torch {torch.__version__}")
    print(f"hand-over   {switch}")
    print(f"online acc  {acc}")
    print(f"run         {result.out}: checkpoint.pt, metrics.jsonl, metrics.png, summary.json")
    print(f"next        rela-fast eval {result.out} --data {args.data}")
    return 0
