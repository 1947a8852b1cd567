"""`emoverse quickstart [--out DIR] [--size N] [KEY=VALUE ...]`

The embedded default, end to end on one machine, CPU only: `emoverse train m2se-tiny`
(write the tiny Qwen2-VL, generate the demo EMT set, run the media stage on Ray Data,
train both stages on Ray Train, evaluating after each) and print the table.
"""

from __future__ import annotations

import time
from pathlib import Path

from emoverse.console import logger
from emoverse.drivers.training import results_table, train_recipe
from emoverse.media.cache import face_table
from emoverse.recipe import load_recipe

log = logger(__name__)


def run_quickstart(out: str | Path | None = None, size: int | None = None, seed: int = 0,
                   overrides: list[str] | None = None) -> Path:
    """`size`: demo samples (default: the recipe's `data.demo_size`)."""
    start = time.time()
    sized = [f"data.demo_size={size}"] if size else []
    # bad overrides fail here, before any work
    recipe = load_recipe("m2se-tiny", [*sized, f"data.demo_seed={seed}", *(overrides or [])])
    run_dir = Path(out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    results = train_recipe(recipe, run_dir)
    print()
    print(face_table(results["media"]))
    print()
    print(results_table(results))
    print()
    log.info(f"finished in {time.time() - start:.0f}s; everything is under {run_dir}")
    return run_dir
