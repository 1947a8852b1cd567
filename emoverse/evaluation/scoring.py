"""Score predictions per task against the manifest's gold labels, with baselines. No Ray."""

from __future__ import annotations

import pandas as pd

from emoverse.tasks import TASK_NAMES, get_task


def score(manifest: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, dict]:
    """Per task: metrics of `predictions` (sample_id, prediction) on their manifest rows."""
    rows = manifest.set_index("sample_id")
    results = {}
    for task_name in TASK_NAMES:
        preds = predictions[predictions.task == task_name]
        if preds.empty:
            continue
        task = get_task(task_name)
        golds = [task.gold(rows.loc[sid]) for sid in preds.sample_id]
        answers = [task.parse(text) for text in preds.prediction]
        results[task_name] = {"primary": task.primary_metric, **task.score(golds, answers)}
    return results


def baselines(manifest: pd.DataFrame, eval_ids: dict[str, list[str]]) -> dict[str, dict]:
    """Majority-class baseline per task: learnt on the train split, scored on `eval_ids`."""
    results = {}
    rows = manifest.set_index("sample_id")
    for task_name, ids in eval_ids.items():
        task = get_task(task_name)
        train = manifest[(manifest.task == task_name) & (manifest.split == "train")]
        train_golds = [task.gold(r) for _, r in train.iterrows()]
        golds = [task.gold(rows.loc[sid]) for sid in ids]
        answers = task.answers_from_values(task.baseline(train_golds, golds))
        results[task_name] = {"primary": task.primary_metric, **task.score(golds, answers)}
    return results


def table(columns: dict[str, dict[str, dict]]) -> str:
    """A plain-text table: one row per task, one column per named result set."""
    from tabulate import tabulate

    tasks = [t for t in TASK_NAMES if any(t in c for c in columns.values())]
    rows = []
    for t in tasks:
        primary = next(c[t]["primary"] for c in columns.values() if t in c)
        rows.append([t.upper(), primary, *(f"{c[t][primary]:.3f}" if t in c else "-"
                                           for c in columns.values())])
    return tabulate(rows, headers=["task", "metric", *columns], disable_numparse=True)
