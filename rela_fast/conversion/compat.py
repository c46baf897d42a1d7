"""Whether an existing store at ``--out`` can be reused, must be refused, or may be recomputed.

Differences are :class:`StoreMismatch` values (a kind and its details); sentences are made from them only
at the edge (:meth:`StoreMismatch.message`), never parsed back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rela_fast.conversion.inputs import ConversionInputs
from rela_fast.conversion.settings import ConvertSettings
from rela_fast.conversion.workdir import claim_message
from rela_fast.errors import UserError
from rela_fast.ownership import ours
from rela_fast.targets import TargetStore, describe_change

# with kept feature shards these are recomputed incrementally (only the shards whose rows changed)
INCREMENTAL = frozenset({"source", "dim"})


@dataclass(frozen=True)
class StoreMismatch:
    """One way an existing store differs from the requested conversion."""

    kind: str  # "prior", "size", "dim" or "source"
    details: dict[str, Any] = field(default_factory=dict)

    def message(self) -> str:
        d = self.details
        if self.kind == "prior":
            return f"prior {d['key']} {d['stored']} (requested {d['requested']})"
        if self.kind == "size":
            return f"size S={d['stored']} (requested {d['requested']})"
        if self.kind == "dim":
            return f"dim d={d['stored']} (requested {d['requested']})"
        return f"a different source ({d['change']})"


def store_mismatches(store: TargetStore, inputs: ConversionInputs) -> list[StoreMismatch]:
    """What differs between ``store`` and the conversion ``inputs`` describe (empty: reusable)."""
    meta, found = store.meta, []
    old_prior, prior = meta.get("prior", {}), inputs.prior_id
    for key in ("name", "weights_hash"):
        if old_prior.get(key) != prior.get(key):
            details = {"key": key, "stored": old_prior.get(key), "requested": prior.get(key)}
            found.append(StoreMismatch("prior", details))
    for kind, requested in (("size", inputs.size), ("dim", inputs.dim)):
        if meta.get(kind) != requested:
            found.append(StoreMismatch(kind, {"stored": meta.get(kind), "requested": requested}))
    change = describe_change(store, inputs.source, inputs.fingerprint, inputs.keys)
    if change:
        found.append(StoreMismatch("source", {"change": change}))
    return found


def _join(mismatches: list[StoreMismatch]) -> str:
    return "; ".join(m.message() for m in mismatches)


@dataclass(frozen=True)
class Decision:
    """``store``: reuse it as it is; otherwise convert (``stale`` says why, for the log)."""

    store: TargetStore | None = None
    stale: str | None = None


def decide(settings: ConvertSettings, inputs: ConversionInputs) -> Decision:
    """Reuse, recompute, or refuse (UserError) what is at ``out``. Only a store of ours (marked, or in the
    0.1 layout) is ever replaced: a file or a user's folder is refused even with ``overwrite``."""
    out = settings.out
    refusal = claim_message(out, "the target store goes there")
    if refusal:
        raise UserError(refusal)
    if not out.exists() or not any(out.iterdir()):
        return Decision()
    try:
        existing = TargetStore(out)
    except UserError as exc:
        if settings.overwrite:
            return Decision(stale="it is not a usable target store")
        raise UserError(
            f"{out}: exists but is not a usable target store ({exc}); pass --overwrite to replace it"
        ) from None
    found = store_mismatches(existing, inputs)
    if not found and not settings.overwrite:
        return Decision(store=existing)
    incremental = (settings.work / "plan.json").is_file() and ours(settings.work) and all(
        m.kind in INCREMENTAL for m in found
    )
    if found and not settings.overwrite and not incremental:
        raise UserError(
            f"{out}: holds targets made with {_join(found)}; nothing was reused. "
            "Pass --overwrite to recompute them (or choose another --out)"
        )
    return Decision(stale=_join(found) if found else None)

