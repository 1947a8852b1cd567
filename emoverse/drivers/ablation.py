"""`emoverse ablate RECIPE [KEY=VALUE ...] [--seeds 0 1 2] [--out DIR]`

The paper's central claim, tested on a recipe: does staging help? The recipe as written
(its stages in order) against one stage on the union of its mixtures with the same total
samples (`single_stage`), each trained with several run seeds on the same base model,
data and media cache, each evaluated on the recipe's split. Prints every task's metric
after the last stage, mean and spread over the seeds, side by side. Deterministic runs
(the recipe's `deterministic`) make each cell repeatable, so the spread is the seeds'.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

from emoverse.console import logger
from emoverse.drivers.training import train_recipe
from emoverse.recipe import MixtureEntry, Recipe, apply_overrides
from emoverse.recipe_paths import resolve_paths
from emoverse.rundir import RunDir

log = logger(__name__)
ARMS = ("staged", "single")


def stage_samples(recipe: Recipe) -> list[int]:
    """Samples each stage trains on (epochs x epoch size); stages need an epoch_size."""
    missing = [s.name for s in recipe.stages if s.epoch_size is None]
    if missing:
        raise ValueError(f"recipe {recipe.name!r}: stages {', '.join(missing)} have no "
                         "epoch_size, so their samples are unknown before the data is read; "
                         "give each stage an epoch_size to ablate it")
    return [s.epochs * s.epoch_size for s in recipe.stages]


def single_stage(recipe: Recipe) -> Recipe:
    """The recipe as one stage: each (task, source) weighted by the samples the stages gave
    it, so the single stage sees each task as often as the stages did altogether, over the
    same total samples and epochs; trained as the first stage is (trainable parts, lr,
    schedule, batch), since it starts from the same base."""
    samples = stage_samples(recipe)
    shares: dict[tuple[str, str], float] = defaultdict(float)
    for stage, count in zip(recipe.stages, samples):
        total = sum(e.weight for e in stage.mixture)
        for entry in stage.mixture:
            shares[(entry.task, entry.source)] += count * entry.weight / total
    first = recipe.stages[0]
    epochs = sum(s.epochs for s in recipe.stages)
    union = [MixtureEntry(task=task, source=source, weight=round(share / sum(samples), 6))
             for (task, source), share in shares.items()]
    stage = first.model_copy(update={
        "name": "single-stage-union", "mixture": union, "epochs": epochs,
        "epoch_size": sum(samples) // epochs, "max_steps": None})
    return recipe.model_copy(update={"name": f"{recipe.name}-single-stage", "stages": [stage]})


def summarise(results: dict[str, dict[int, dict]]) -> list[dict]:
    """Per task: each arm's primary metric after its last stage, over the seeds."""
    rows = []
    tasks = sorted({t for runs in results.values() for r in runs.values() for t in r})
    for task in tasks:
        metric = next(r[task]["primary"] for runs in results.values()
                      for r in runs.values() if task in r)
        row = {"task": task, "metric": metric}
        for arm, runs in results.items():
            row[arm] = [r[task][metric] for _, r in sorted(runs.items()) if task in r]
        rows.append(row)
    return rows


def ablation_table(rows: list[dict], seeds: list[int]) -> str:
    from tabulate import tabulate

    def cell(values: list[float]) -> str:
        if not values:
            return "-"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    body = [[r["task"], r["metric"], cell(r["staged"]), cell(r["single"]),
             " ".join(f"{v:.3f}" for v in r["staged"]),
             " ".join(f"{v:.3f}" for v in r["single"])] for r in rows]
    return tabulate(body, headers=["task", "metric", "staged (mean ± sd)",
                                   "single stage (mean ± sd)", f"staged, seeds {seeds}",
                                   f"single, seeds {seeds}"], disable_numparse=True)


def run_ablation(recipe: Recipe, out: str | Path, seeds: list[int]) -> list[dict]:
    """Train both arms with each seed under `out` (finished runs are reused) and return
    `summarise`'s rows; `out/ablation.json` keeps them."""
    out = Path(out).resolve()
    recipe = resolve_paths(recipe)
    shared = RunDir(out / "shared")  # one base model and data set for every run
    fixed = [f"base_model={shared.base_model(recipe)}",
             f"data.manifest={shared.manifest(recipe)}"]
    arms = {"staged": apply_overrides(recipe, fixed),
            "single": apply_overrides(single_stage(recipe), fixed)}
    results: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in seeds:
        for arm in ARMS:
            seeded = apply_overrides(arms[arm], [f"seed={seed}"])
            log.info("ablation: %s, seed %d", arm, seed)
            metrics = train_recipe(seeded, out / f"{arm}-seed{seed}",
                                   cache_root=out / "media-cache")
            last = seeded.stages[-1].name
            results[arm][seed] = metrics["stages"][last]["metrics"]
    rows = summarise(results)
    (out / "ablation.json").write_text(json.dumps(
        {"recipe": recipe.name, "seeds": seeds, "rows": rows,
         "single_stage": json.loads(arms["single"].stages[0].model_dump_json())}, indent=2))
    return rows
