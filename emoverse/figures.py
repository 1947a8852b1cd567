"""Figures written to files: pyplot on the Agg backend (servers have no display)."""

from __future__ import annotations


def pyplot():
    """matplotlib.pyplot, imported lazily (it is slow) on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
