"""`emoverse bench sweep [--levels L] [--asha-trials N] [--demo-size N] [--workdir DIR]`

The tiny recipe's stage-1 mixture searched two ways over the same space (the MSA and FER
weights, each in [0.1, 1.0], MER fixed), on the same demo set and training budget:
(a) a full grid of L x L points, every trial running both stages, and (b) ASHA with
Optuna's TPE over the same ranges, as `emoverse sweep` runs it. Prints each search's
compute (trial-iterations: stages run and reported, and stages actually trained after
prefix reuse), wall time and best validation objective, and the ratios. Target: ASHA
within 1 point of the grid's best with at most half the compute.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from pathlib import Path

from emoverse.recipe import Recipe, apply_overrides, load_recipe
from emoverse.sweep_space import SweepSpace

S1 = "stage1-multitask-pretraining"
RANGE = (0.1, 1.0)
# A budget that learns something in about a minute per trial on 2 cores. The demo set's
# size sets the validation split (4%): 1600 samples give 64 validation clips, and fewer
# make the objective jump by whole points. Training sees the same samples whatever it is.
DEMO_SIZE = 1600
SHORT = ["eval.batch_size=64", "stages.0.epochs=2",
         "stages.0.epoch_size=1600", "stages.0.log_every=100", "stages.1.epochs=1",
         "stages.1.epoch_size=400", "stages.1.log_every=100"]


def bench_recipe(demo_size: int = DEMO_SIZE) -> Recipe:
    return apply_overrides(load_recipe("m2se-tiny"), [f"data.demo_size={demo_size}", *SHORT])


def grid_space(levels: int) -> SweepSpace:
    """The searched ranges, and the L x L grid over them as the space's points."""
    values = [RANGE[0] + (RANGE[1] - RANGE[0]) * i / (levels - 1) for i in range(levels)]
    points = [{S1: {"weights": {"msa": msa, "fer": fer}}}
              for msa, fer in itertools.product(values, values)]
    return SweepSpace(stages={S1: {"weights": {"msa": RANGE, "fer": RANGE}}}, points=points)


def one_search(recipe: Recipe, space: SweepSpace, trials: int, out: Path, asha: bool) -> dict:
    from emoverse.drivers.sweep import run_sweep

    start = time.perf_counter()
    result = run_sweep(recipe, space, trials, out, search="optuna" if asha else "random",
                       baseline=False, early_stopping=asha)
    table = result["table"]
    trained = len(list(out.glob("stages/*/checkpoints/*/lineage.json")))
    finished = table[table.stages == len(recipe.stages)]
    return {"trials": len(table), "iterations": int(table.stages.sum()), "trained": trained,
            "stopped": int((table.stages < len(recipe.stages)).sum()),
            "best": float(finished.objective.max()), "seconds": time.perf_counter() - start}


def run(levels: int, asha_trials: int | None, workdir: str | None,
        demo_size: int | None = None) -> dict:
    from emoverse.distributed.session import ensure_ray

    if levels < 2:
        raise ValueError(f"--levels must be at least 2 (got {levels})")
    root = Path(workdir or tempfile.mkdtemp(prefix="emoverse-bench-sweep-"))
    demo_size = demo_size or DEMO_SIZE
    recipe = bench_recipe(demo_size)
    grid = grid_space(levels)
    # Half as many trials as grid points: every trial stopped after stage 1 saves the
    # compute that keeps ASHA under half the grid's (which the grid's stage reuse lowers).
    asha_trials = asha_trials or math.ceil(levels * levels / 2)
    ensure_ray()
    out = {"levels": levels, "root": str(root), "demo_size": demo_size}
    out["grid"] = one_search(recipe, grid, len(grid.points), root / "grid", asha=False)
    asha = grid.model_copy(update={"points": []})
    out["asha"] = one_search(recipe, asha, asha_trials, root / "asha", asha=True)
    return out


def report(r: dict) -> str:
    from tabulate import tabulate

    g, a = r["grid"], r["asha"]
    rows = [[name, m["trials"], m["iterations"], m["trained"], m["stopped"],
             f"{m['seconds']:.0f}", f"{m['best']:.4f}"]
            for name, m in (("(a) grid, no early stopping", g), ("(b) ASHA + Optuna TPE", a))]
    return "\n".join([
        f"space: {S1} weights msa, fer in {list(RANGE)} (mer fixed); "
        f"grid {r['levels']}x{r['levels']}; {r['demo_size']} demo samples; "
        f"work under {r['root']}",
        tabulate(rows, headers=["search", "trials", "trial-iterations", "stages trained",
                                "trials stopped", "seconds", "best objective"],
                 disable_numparse=True),
        f"compute b/a = {a['iterations'] / g['iterations']:.2f} trial-iterations, "
        f"{a['seconds'] / g['seconds']:.2f} wall time",
        f"best objective b - a = {100 * (a['best'] - g['best']):+.1f} points",
    ])
