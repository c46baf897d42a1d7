"""Plotting is optional: matplotlib comes with the ``plot`` extra and is imported only when a plot is drawn.

Every function that draws calls :func:`require_pyplot` first, so ``import rela_fast`` never loads
matplotlib and a missing install is one clear message instead of an ImportError deep in a run.
"""

from __future__ import annotations

import sys
from types import ModuleType

from rela_fast.errors import UserError

INSTALL_HINT = "pip install 'rela_fast[plot]' (or pip install matplotlib)"


def require_pyplot(what: str = "plotting") -> ModuleType:
    """``matplotlib.pyplot`` (on the file-only Agg backend unless the process already imported pyplot).

    Raises a :class:`UserError` naming the ``plot`` extra when matplotlib is missing; ``what`` names the plot
    for that message (e.g. ``"runs/a/metrics.png"``).
    """
    try:
        import matplotlib
    except ImportError:
        raise UserError(f"{what} needs matplotlib, which is not installed: {INSTALL_HINT}") from None
    if "matplotlib.pyplot" not in sys.modules:  # keep the backend of a session that already plots
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
