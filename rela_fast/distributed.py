"""torch.distributed set-up shared by the converter and the trainer (both run under ``torchrun``), and the
check of the environment variables rela_fast reads (every command calls :func:`check_environment` first)."""

from __future__ import annotations

import os

from rela_fast.errors import UserError

LAUNCH_VARS = {"WORLD_SIZE": 1, "RANK": 0, "LOCAL_RANK": 0}  # torchrun's variables and their lower bounds
MAX_WORLD = 1 << 16


def env_int(name: str, default: int, lo: int = 0, hi: int = MAX_WORLD) -> int:
    """The whole number in environment variable ``name`` (``default`` when unset or empty), in ``[lo, hi]``;
    anything else is a one-line UserError naming the variable."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise UserError(f"{name}={text[:40]!r}: must be a whole number in [{lo}, {hi}]; torchrun sets it, so unset "
                        "it for a single process")
    return value


def check_environment() -> None:
    """Refuse malformed environment variables before any work, the same way in every command: torchrun's
    ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK`` (whole numbers, ``RANK < WORLD_SIZE``) and ``RELA_FAST_BACKEND``
    (a known backend). Cheap: torch is imported only when ``RELA_FAST_BACKEND`` is set."""
    world = env_int("WORLD_SIZE", 1, 1)
    rank = env_int("RANK", 0)
    env_int("LOCAL_RANK", 0)
    if rank >= world:
        raise UserError(f"RANK={rank} with WORLD_SIZE={world}: the rank must be below the world size; torchrun "
                        "sets both, so unset them for a single process")
    if os.environ.get("RELA_FAST_BACKEND", "").strip():
        from rela_fast.ops.backend import forced_backend

        forced_backend()  # a UserError (BackendUnavailable) for an unknown value


def init_from_env(device: str | None = None) -> bool:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1); True if this call did.

    gloo on CPU, nccl on CUDA (each rank on ``cuda:LOCAL_RANK``).
    """
    import torch
    import torch.distributed as dist

    if env_int("WORLD_SIZE", 1, 1) <= 1 or dist.is_initialized():
        return False
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(env_int("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    return True


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
