"""Directories written all at once: readers see the old one or the complete new one.

Stage checkpoints, media caches, evaluation reports and exported models are each written
into `OUT.partial` and renamed to `OUT` when complete, so an interrupted job never leaves
a half-written directory where a later one would take it for finished.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def partial(out: str | Path) -> Path:
    """Where `out` is written before it is complete."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


@contextmanager
def atomic_dir(out: str | Path) -> Iterator[Path]:
    """A fresh `OUT.partial` to fill; when the block ends without an error it replaces
    `out` in one rename. After an error it stays behind and the next attempt clears it."""
    out, tmp = Path(out), partial(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
