"""ScoreBook: per-sample training scores kept on the device, updated from each batch's per-sample losses.

State (tensors on ``device``): ``score`` (float32: the EMA of the sample's loss, or with ``momentum=0`` its
latest loss; ``initial`` until the sample is first seen, +inf by default so that never-seen samples rank
first for ``"topk"`` and ``"weighted"`` and are always kept by the InfoBatch policies), ``seen`` (int32:
how many finite losses it received) and ``last_epoch`` (int32: the epoch of its latest update, -1 if never).

Which momentum: the InfoBatch policies score each sample by its *latest* loss (as InfoBatch does), so
they need ``momentum=0`` (selection rejects another book for them); the other score policies default to
the EMA (0.9). :func:`rela_fast.subset.score_momentum` gives the momentum of a policy.

Update rule (one kernel launch per batch on CUDA; see :mod:`rela_fast.ops.scores.reference`): a sample's
first loss sets its score, later ones give ``score = m * score + (1 - m) * loss`` (``m = 0``: exactly the
latest loss); duplicate indices in a batch contribute their largest loss once and count every occurrence;
non-finite losses are skipped; an out-of-range index rejects the batch with a UserError (on CUDA the error
is raised at the next :meth:`ScoreBook.check`, which selection and ``state_dict`` call, so training steps
never wait on the host).
"""

from __future__ import annotations

import math

import torch

from rela_fast.errors import UserError
from rela_fast.ops.backend import choose_backend, dispatch


def _float32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


class ScoreBook:
    """Per-sample scores for ``n`` samples on ``device`` (see module doc)."""

    def __init__(
        self,
        n: int,
        device: torch.device | str = "cpu",
        momentum: float = 0.9,
        initial: float = float("inf"),
        *,
        backend: str | None = None,
    ) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0 or n >= 2**31 - 1:
            raise UserError(f"n: expected a sample count in [0, 2**31 - 1), got {n!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise UserError(f"momentum: {momentum} is outside [0, 1); 0 keeps only the latest loss")
        if math.isnan(float(initial)):
            raise UserError("initial: NaN is not a score; use +inf (try unseen samples first) or a number")
        self.n = n
        self.device = torch.device(device)
        self.momentum = float(momentum)
        self.initial = float(initial)
        self.backend = backend
        self.epoch = 0
        self.score = torch.full((n,), self.initial, dtype=torch.float32, device=self.device)
        self.seen = torch.zeros(n, dtype=torch.int32, device=self.device)
        self.last_epoch = torch.full((n,), -1, dtype=torch.int32, device=self.device)
        self._seen_at_sync = self.seen.clone()
        self._bad = torch.zeros(1, dtype=torch.int32, device=self.device)  # deferred out-of-range count (CUDA)
        self._scratch: torch.Tensor | None = None  # (2, n) int32 zeros for the Triton kernel, made on first use
        self._a, self._b = _float32(self.momentum), _float32(1.0 - self.momentum)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ScoreBook(n={self.n}, device={self.device}, momentum={self.momentum}, initial={self.initial})"

    def set_epoch(self, epoch: int) -> None:
        """The epoch stamped by later updates that pass no ``epoch``."""
        self.epoch = int(epoch)

    def reset(self) -> None:
        """Forget every score: all samples unseen again (``initial``, seen 0, last epoch -1).

        For when the loss being scored changes, e.g. at the hand-over from the ReLA loss to the method's
        own (another scale): InfoBatch then keeps every sample until it has a loss of the new kind. Every
        rank must reset at the same step (the hand-over switches on all ranks together).
        """
        self.score.fill_(self.initial)
        self.seen.zero_()
        self.last_epoch.fill_(-1)
        self._seen_at_sync.zero_()

    def update(self, indices: torch.Tensor, losses: torch.Tensor, epoch: int | None = None) -> None:
        """Scatter one batch: ``indices`` (int, B) of samples and their per-sample ``losses`` (float, B)."""
        if not isinstance(indices, torch.Tensor) or not isinstance(losses, torch.Tensor):
            raise UserError("indices, losses: expected two tensors")
        if indices.dim() != 1 or losses.dim() != 1 or indices.numel() != losses.numel():
            raise UserError(
                f"indices, losses: expected two 1-D tensors of the same length, got shapes {tuple(indices.shape)} "
                f"and {tuple(losses.shape)}"
            )
        if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
            raise UserError(f"indices: expected integer sample indices, got {indices.dtype}")
        epoch = self.epoch if epoch is None else int(epoch)
        idx = indices.detach().to(device=self.device, dtype=torch.int64, non_blocking=True).contiguous()
        loss = losses.detach().to(device=self.device, dtype=torch.float32, non_blocking=True).contiguous()
        backend = self.backend or choose_backend("score_update", self.device)
        fn = dispatch("score_update", self.device, backend)
        if backend == "triton" and self._scratch is None:
            self._scratch = torch.zeros(2, self.n, dtype=torch.int32, device=self.device)
        n_bad = fn(self.score, self.seen, self.last_epoch, idx, loss, self._a, self._b, epoch, self._bad,
                   scratch=self._scratch)
        if n_bad:
            raise UserError(self._bad_message(n_bad))

    def _bad_message(self, n_bad: int) -> str:
        return (
            f"indices: {n_bad} index value(s) outside [0, {self.n}) passed to ScoreBook.update; the batch was not "
            "applied; pass dataset sample indices (the ScoreBook was built for n samples)"
        )

    def check(self) -> None:
        """Raise the UserError of a rejected batch that a CUDA update could not raise at once (syncs)."""
        n_bad = int(self._bad.item())
        if n_bad:
            self._bad.zero_()
            raise UserError(self._bad_message(n_bad))

    def sync(self, group=None) -> None:
        """Merge the updates every rank made since the last sync, so all ranks hold the same book.

        Collective (every rank must call it). A sample updated on one rank takes that rank's state; one
        updated on several ranks takes the largest of their scores (the duplicate rule) and the summed
        counts. Books must start identical on all ranks (same n, momentum, initial), as they do when
        every rank builds them the same way.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
            self._seen_at_sync = self.seen.clone()
            return
        self.check()
        updated = self.seen != self._seen_at_sync
        best = torch.where(updated, self.score, torch.full_like(self.score, -float("inf")))
        delta = self.seen - self._seen_at_sync
        writers = updated.to(torch.int32)
        dist.all_reduce(best, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(delta, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(writers, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(self.last_epoch, op=dist.ReduceOp.MAX, group=group)
        self.score.copy_(torch.where(writers > 0, best, self.score))
        self.seen.copy_(self._seen_at_sync + delta)
        self._seen_at_sync = self.seen.clone()

    def state_dict(self) -> dict:
        """Everything needed to resume: tensors on the CPU plus the settings (checks deferred errors first)."""
        self.check()
        return {
            "n": self.n,
            "momentum": self.momentum,
            "initial": self.initial,
            "epoch": self.epoch,
            "score": self.score.cpu(),
            "seen": self.seen.cpu(),
            "last_epoch": self.last_epoch.cpu(),
            "seen_at_sync": self._seen_at_sync.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (onto this book's device); the sample count must match."""
        if int(state.get("n", -1)) != self.n:
            raise UserError(f"state_dict: saved for n={state.get('n')} samples, this ScoreBook has n={self.n}")
        self.momentum = float(state["momentum"])
        self.initial = float(state["initial"])
        self._a, self._b = _float32(self.momentum), _float32(1.0 - self.momentum)
        self.epoch = int(state["epoch"])
        self.score.copy_(state["score"])
        self.seen.copy_(state["seen"])
        self.last_epoch.copy_(state["last_epoch"])
        self._seen_at_sync.copy_(state.get("seen_at_sync", state["seen"]))
        self._bad.zero_()
