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


def by_source(manifest: pd.DataFrame, predictions: pd.DataFrame) -> dict[str, dict]:
    """For each task answered on rows of more than one source (MELD and ECF rows of MER,
    or the demo set's voice-decided rows): `score` per source."""
    sources = manifest.set_index("sample_id").source
    out = {}
    for task_name, preds in predictions.groupby("task"):
        source = sources.loc[preds.sample_id].to_numpy()
        if len(set(source)) > 1:
            out[task_name] = {s: score(manifest, preds[source == s])[task_name]
                              for s in sorted(set(source))}
    return out


def baselines_by_source(manifest: pd.DataFrame, eval_ids: dict[str, list[str]]
                        ) -> dict[str, dict]:
    """`baselines` per source, for the tasks `by_source` splits (learnt on the whole train
    split of the task, scored on each source's rows)."""
    sources = manifest.set_index("sample_id").source
    out = {}
    for task_name, ids in eval_ids.items():
        source = sources.loc[ids].to_numpy()
        if len(set(source)) > 1:
            out[task_name] = {s: baselines(manifest, {task_name: [i for i, o in zip(ids, source)
                                                                  if o == s]})[task_name]
                              for s in sorted(set(source))}
    return out


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


def table(columns: dict[str, dict[str, dict]],
          sources: dict[str, dict[str, dict]] | None = None) -> str:
    """A plain-text table: one row per task, one column per named result set; with
    `sources` (per column, `by_source`'s result), a row per source under its task."""
    from tabulate import tabulate

    def cell(results: dict, key: str) -> str:
        return f"{results[key]:.3f}" if key in results else "-"

    tasks = [t for t in TASK_NAMES if any(t in c for c in columns.values())]
    rows = []
    for t in tasks:
        primary = next(c[t]["primary"] for c in columns.values() if t in c)
        rows.append([t.upper(), primary, *(cell(c.get(t, {}), primary)
                                           for c in columns.values())])
        split = {name: (sources or {}).get(name, {}).get(t, {}) for name in columns}
        for source in sorted({s for per in split.values() for s in per}):
            rows.append([f"  {t.upper()} {source}", primary,
                         *(cell(split[name].get(source, {}), primary) for name in columns)])
    return tabulate(rows, headers=["task", "metric", *columns], disable_numparse=True)
