"""``rela-fast convert``: turn a dataset into ReLA targets (ReLA-D), resumable, torchrun-aware."""

from __future__ import annotations

import argparse

from rela_fast.cli.aliases import add_deprecated_alias, spelling

HELP = "convert images into ReLA targets with a prior model (decode -> encode -> PCA -> target store)"


# `--config FILE` may set these (YAML/JSON, keys as the flags' names with underscores); `--print-config` prints them
FLAG_FILE_KEYS = ("src", "out", "prior", "weights", "size", "dim", "batch_size", "decoder", "device", "on_error",
                  "shard_size", "overwrite", "keep_features", "precision", "compile", "workers", "verify_content",
                  "quiet")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", nargs="?", metavar="SRC",
        help="image folder (class sub-folders = labels), file list, webdataset .tar(s) or IDX folder/file",
    )
    parser.add_argument("--src", dest="src_opt", metavar="SRC", help="same as the positional SRC")
    parser.add_argument("--out", required=True, metavar="DIR", help="target store directory to write")
    parser.add_argument(
        "--prior", required=True,
        help="timm:NAME (random init unless --weights), torchscript:FILE, run:DIR (the backbone a `rela-fast train` "
        "run saved), or a registered name (efficientnet_lite0)",
    )
    parser.add_argument("--weights", metavar="FILE", help="local state dict for the prior (.pth/.pt/.safetensors)")
    parser.add_argument("--size", type=int, metavar="S", help="observer input size S (default: the prior's)")
    parser.add_argument(
        "--dim", type=int, metavar="d",
        help="target width d = min(F, P) for a student of width F (default: the prior's feature width P)",
    )
    parser.add_argument("--batch-size", type=int, default=128, metavar="B", help="images per batch (default 128)")
    parser.add_argument(
        "--decoder", default="auto", choices=["auto", "dali", "dali-cpu", "nvjpeg", "pil"],
        help="image decoder (default auto: DALI on GPU, DALI CPU, nvJPEG, PIL, whichever is available)",
    )
    parser.add_argument("--device", choices=["cuda", "cpu"], help="where the prior runs (default: cuda if available)")
    parser.add_argument(
        "--on-error", default="skip", choices=["skip", "fail"],
        help="undecodable files: skip and list them in the store (default) or stop at the first",
    )
    parser.add_argument(
        "--shard-size", type=int, default=4096, metavar="N",
        help="rows per resumable shard (rounded up to a multiple of the batch size; default 4096)",
    )
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace a store that rela_fast made from other data or settings (never a folder it did not make)",
    )
    parser.add_argument(
        "--keep-features", action="store_true",
        help="keep the feature shards (<out>.work) so a later change of the source is recomputed incrementally",
    )
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
        help="encoder precision (default auto: bf16/fp16 on GPU, fp32 on CPU)",
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the fused encoder")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="parallel image readers: decoder threads (default: all cores)")
    add_deprecated_alias(parser, "--threads", "--workers", "workers", type=int, metavar="N")
    parser.add_argument(
        "--verify-content", action="store_true",
        help="identify files by a sha256 of their bytes, not size + mtime (reads every file once more; notices "
        "a same-size edit that kept the mtime)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    parser.add_argument("--config", metavar="FILE", help="settings as YAML or JSON (keys: the flags' names, e.g. "
                        "prior, size, batch_size); flags given here override the file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    add_deprecated_alias(parser, "--no-progress", "--quiet", "quiet", flag=True)


def run(args: argparse.Namespace) -> int:
    from rela_fast.conversion import convert
    from rela_fast.distributed import init_from_env
    from rela_fast.errors import UserError

    src = args.src_opt or args.src
    if not src:
        raise UserError("SRC: missing; give the dataset as `rela-fast convert SRC --out DIR --prior PRIOR`")
    if args.src_opt and args.src and args.src_opt != args.src:
        raise UserError(f"SRC: given twice ({args.src!r} and --src {args.src_opt!r}); give it once")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"{spelling(args, 'workers', '--workers')} {args.workers}: must be at least 1 (or leave it "
                        "out: all cores)")
    if args.print_config:
        import json

        values = {k: (src if k == "src" else getattr(args, k)) for k in FLAG_FILE_KEYS}
        print(json.dumps(values, indent=1))
        return 0
    started = init_from_env(args.device)
    try:
        convert(
            src,
            args.out,
            args.prior,
            weights=args.weights,
            size=args.size,
            dim=args.dim,
            batch_size=args.batch_size,
            decoder=args.decoder,
            device=args.device,
            on_error=args.on_error,
            shard_size=args.shard_size,
            progress=not args.quiet,
            overwrite=args.overwrite,
            keep_features=args.keep_features,
            precision=args.precision,
            compile=args.compile,
            num_threads=args.workers,
            verify_content=args.verify_content,
        )
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0
