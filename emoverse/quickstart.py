"""`emoverse quickstart [--out DIR] [--size N] [KEY=VALUE ...]`

The embedded default, end to end on one machine, CPU only: write the tiny Qwen2-VL,
generate the demo EMT set, run the media stage on Ray Data, train the `m2se-tiny`
recipe's two stages on Ray Train, evaluate after each stage and print the table.
"""

from __future__ import annotations

import time
from pathlib import Path

from emoverse.emt.demo import build_demo
from emoverse.model.tiny import write_tiny_model
from emoverse.model.vocabulary import instruction_corpus
from emoverse.pipeline import results_table, run_recipe, say
from emoverse.recipe import load_recipe

DEFAULT_SIZE = 4600  # ~3000 face-bearing training clips: fewer were memorised, not learnt


def run_quickstart(out: str | Path | None = None, size: int = DEFAULT_SIZE, seed: int = 0,
                   overrides: list[str] | None = None) -> Path:
    start = time.time()
    recipe = load_recipe("m2se-tiny", overrides)  # bad overrides fail before any work
    run_dir = Path(out or f"runs/quickstart-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    say(f"run directory: {run_dir}")

    say("writing the tiny random-init Qwen2-VL (tokenizer trained in-process)")
    model_dir = write_tiny_model(run_dir / "base-model", instruction_corpus())
    recipe = recipe.model_copy(update={"base_model": str(model_dir)})

    say(f"generating the demo EMT set ({size} samples, seed {seed})")
    last = [0.0]

    def progress(done: int, total: int) -> None:
        if time.time() - last[0] > 5 or done == total:
            last[0] = time.time()
            say(f"  demo clips {done}/{total}")

    manifest = build_demo(run_dir / "data", size=size, seed=seed, progress=progress)
    results = run_recipe(recipe, manifest, run_dir)
    print()
    print(results_table(results))
    print()
    say(f"finished in {time.time() - start:.0f}s; everything is under {run_dir}")
    return run_dir
