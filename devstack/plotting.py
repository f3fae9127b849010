"""matplotlib for the drills' and benchmarks' plots, imported only when a plot is asked for.

The development environment leaves matplotlib out (it is pyproject's ``bench`` extra): a plot
without it ends with how to get it, not with an ImportError.
"""

from __future__ import annotations

from types import ModuleType

BENCH_INSTALL = "make bench (pip install --require-hashes -r requirements-bench.txt)"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the file-only Agg backend; if absent, SystemExit with the fix."""
    try:
        import matplotlib
    except ImportError as exc:
        message = f"--plot needs matplotlib, which .venv leaves out: {BENCH_INSTALL}"
        raise SystemExit(message) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
