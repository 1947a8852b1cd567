"""`emoverse quickstart [--out DIR] [--size N] [--recipe m2se-tiny-audio] [KEY=VALUE ...]`

The embedded default, end to end on one machine, CPU only: `emoverse train m2se-tiny`
(write the tiny Qwen2-VL, generate the demo EMT set, run the media stage on Ray Data,
train both stages on Ray Train, evaluating after each), then the results, where the time
went, and the commands to take the run further. `--recipe m2se-tiny-audio` runs the same
on a tiny Qwen2.5-Omni that hears the clips' audio, with a demo set whose voice decides
some labels; the table scores those rows apart.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from emoverse.console import logger
from emoverse.drivers.training import results_table, train_recipe
from emoverse.media.cache import face_table
from emoverse.phase_clock import PhaseClock
from emoverse.recipe import load_recipe
from emoverse.tracking.runs import tracked_at

log = logger(__name__)


def run_quickstart(out: str | Path | None = None, size: int | None = None, seed: int = 0,
                   overrides: list[str] | None = None, recipe: str = "m2se-tiny") -> Path:
    """`size`: demo samples (default: the recipe's `data.demo_size`)."""
    clock = PhaseClock()
    sized = [f"data.demo_size={size}"] if size else []
    # bad overrides fail here, before any work
    recipe = load_recipe(recipe, [*sized, f"data.demo_seed={seed}", *(overrides or [])])
    run_dir = Path(out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    results = train_recipe(recipe, run_dir, clock=clock)
    print()
    print(face_table(results["media"]))
    print()
    print(results_table(results))
    print()
    print(clock.table())
    (run_dir / "phases.json").write_text(json.dumps(clock.to_dict(), indent=2))
    print()
    print(next_steps(run_dir))
    log.info(f"finished in {clock.total:.0f}s; everything is under {run_dir}")
    return run_dir


def next_steps(run_dir: Path) -> str:
    """The commands that take a finished quickstart run further."""
    run = shlex.quote(str(run_dir))
    return "\n".join([
        "Next:",
        "  serve this run and open its page (try the demo clips; OpenAI-style API on "
        "http://127.0.0.1:8000/v1):",
        f"    emoverse serve run {run} --media-root {run}/data --open",
        *tracked_at(run_dir),
        "  evaluate it on another EMT manifest (for one from `emoverse emt build`):",
        f"    emoverse eval run --model {run} --manifest OTHER.parquet",
        "  train the paper's recipe on real data (README: the EMT set, real bases):",
        "    emoverse emt build --source meld --root data/MELD --clips data/MELD/clips "
        "--out emt/meld.parquet",
        "    emoverse model convert downloads/InternVL2-4B --out models/InternVL2-4B-hf",
        "    emoverse train m2se-paper --manifest emt/meld.parquet",
    ])
