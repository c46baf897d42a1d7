"""``rela-fast train``: ReLA-F training (or the plain method on the same dynamic subset without --targets)."""

from __future__ import annotations

import argparse

HELP = "train a backbone with ReLA-F on converted targets (without --targets: the plain method, the baseline)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="training images: folder, file list, tar shards, IDX folder (Fashion-MNIST)")
    parser.add_argument("--targets", help="target store from `rela-fast convert` (omit for the plain method)")
    parser.add_argument("--out", required=True, help="run directory: checkpoint.pt, metrics.jsonl/png, summary.json")
    parser.add_argument("--method", default="byol", help="byol (reference), simclr, dino or supervised")
    parser.add_argument("--method-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="method option, e.g. hidden_dim=512 proj_dim=128 temperature=0.2 (repeatable)")
    parser.add_argument("--arch", default="resnet18", help="'convnet[-W]' (small, CPU) or any timm model name")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--budget", type=float, default=1.0, help="fraction of a full run's steps, in (0, 1]")
    parser.add_argument("--policy", default="random", help="subset policy: random (reference), topk, bottomk, "
                        "weighted, infobatch")
    parser.add_argument("--stratify", action="store_true", help="class-stratified subsets (labelled data)")
    parser.add_argument("--recipe", default="default", choices=["default", "authors"],
                        help="authors: frozen random transfer head, constant lr, weight decay 0.01 on all parameters, "
                        "BYOL momentum fixed at 0.99, batch 128 (each overridable below)")
    parser.add_argument("--batch-size", type=int, help="per process and micro-step (default 256; authors 128)")
    parser.add_argument("--accumulate", type=int, default=1, help="gradient-accumulation micro-steps")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "lars"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, help="default 1e-6 on weights only; authors 0.01 on all")
    parser.add_argument("--schedule", choices=["cosine", "constant"], help="lr schedule (default cosine; authors "
                        "constant)")
    parser.add_argument("--freeze-head", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the transfer head a fixed random projection (authors) or train it (default)")
    parser.add_argument("--decay-all", action=argparse.BooleanOptionalAction, default=None,
                        help="weight decay on biases and norms too (authors)")
    parser.add_argument("--warmup", type=float, default=0.0, help="fraction of the steps for linear LR warm-up")
    parser.add_argument("--handover", default="adaptive", choices=["adaptive", "constant"])
    parser.add_argument("--lambda-const", type=float, help="constant hand-over: phase 1 for this fraction of epochs")
    parser.add_argument("--soft-steps", type=int, default=0, help="blend the losses over N steps after the switch")
    parser.add_argument("--image-size", type=int, help="training side (default: the images' side if <= 64, else 224)")
    parser.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    parser.add_argument("--views", "--loader", dest="views", default="auto",
                        choices=["auto", "tensor", "torch", "dali"],
                        help="where the two views come from: auto (in-memory tensors for IDX/arrays and data that "
                        "fits in RAM, DALI on CUDA, else a DataLoader)")
    parser.add_argument("--per-sample-augment", action="store_true",
                        help="torchvision per sample on the workers instead of batched photometric ops")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (always at epoch ends)")
    parser.add_argument("--max-steps", type=int, help="stop after N optimisation steps")
    parser.add_argument("--log-every", type=int, default=1, help="metrics row every N steps")
    parser.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true")


def _method_kwargs(items: list[str]) -> dict:
    from rela_fast.errors import UserError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--method-arg {item!r}: expected KEY=VALUE")
        for cast in (int, float):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    import torch

    from rela_fast.train import ReLATrainer

    trainer = ReLATrainer(
        args.arch, args.method, args.targets, budget=args.budget, epochs=args.epochs, subset_policy=args.policy,
        recipe=args.recipe, batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer,
        weight_decay=args.weight_decay, schedule=args.schedule, freeze_head=args.freeze_head, decay_all=args.decay_all,
        warmup=args.warmup, handover=args.handover, lambda_const=args.lambda_const, soft_steps=args.soft_steps,
        image_size=args.image_size, accumulate=args.accumulate, amp=args.amp, compile=args.compile,
        device=args.device, num_workers=args.workers, views=args.views, seed=args.seed, out=args.out,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every, max_steps=args.max_steps,
        method_kwargs=_method_kwargs(args.method_arg), stratify=args.stratify,
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
