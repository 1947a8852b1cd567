"""An evaluation's report: per-sample predictions, metrics.json and figures. No Ray.

Figures are what a person looks at first: confusion matrices of the classification tasks
(those with `Task.classes`: MSA, MER) and per-task bars of the primary metric against the
majority baseline and, when given, a previous evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from emoverse.atomic_dir import atomic_dir
from emoverse.figures import pyplot
from emoverse.tasks import TASK_NAMES, get_task

METRICS = "metrics.json"
PREDICTIONS = "predictions.parquet"


def parsed_predictions(manifest: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """Predictions with the gold answer text, the parsed value and the parse error per row."""
    rows = manifest.set_index("sample_id")
    out = predictions.sort_values("sample_id").reset_index(drop=True).copy()
    parsed = [get_task(t).parse(p) for t, p in zip(out.task, out.prediction)]
    out["target"] = [rows.loc[s, "target"] for s in out.sample_id]
    out["parsed"] = [json.dumps(a.value, default=list) if a.ok else None for a in parsed]
    out["parse_error"] = [a.error for a in parsed]
    return out


def write_report(out: str | Path, metrics: dict, predictions: pd.DataFrame,
                 manifest: pd.DataFrame, previous: dict | None = None) -> Path:
    """Write metrics.json, predictions.parquet and the PNGs into `out`, atomically."""
    with atomic_dir(out) as tmp:
        parsed_predictions(manifest, predictions).to_parquet(tmp / PREDICTIONS, index=False)
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, sort_keys=True, default=float))
        for task in metrics["tasks"]:
            if get_task(task).classes:
                write_confusion(tmp / f"confusion_{task}.png", task, manifest, predictions)
        write_bars(tmp / "metrics.png", metrics, previous)
    return Path(out)


def write_confusion(path: Path, task_name: str, manifest: pd.DataFrame,
                    predictions: pd.DataFrame) -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    task = get_task(task_name)
    rows = manifest.set_index("sample_id")
    preds = predictions[predictions.task == task_name]
    golds = [str(task.gold(rows.loc[s])) for s in preds.sample_id]
    answers = [task.parse(p) for p in preds.prediction]
    guesses = [str(a.value) if a.ok else "(unparsed)" for a in answers]
    labels = sorted(set(golds)) + sorted(set(guesses) - set(golds))
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2, 1.0 * len(labels) + 2))
    ConfusionMatrixDisplay.from_predictions(golds, guesses, labels=labels, ax=ax,
                                            colorbar=False, xticks_rotation=45)
    ax.set_title(f"{task_name.upper()}: gold (rows) vs answer (columns), n={len(golds)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_bars(path: Path, metrics: dict, previous: dict | None = None) -> None:
    """Grouped bars of each task's primary metric: this model, baseline, previous run."""
    fig = bars_figure(metrics, previous)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


def bars_figure(metrics: dict, previous: dict | None = None):
    """The figure of `write_bars`. Series are named by stage (or `label`), never by path,
    and the legend sits in a band of its own below the axes, inside the saved figure."""
    import numpy as np

    plt = pyplot()
    tasks = [t for t in TASK_NAMES if t in metrics["tasks"]]
    series = {metrics.get("stage") or "this model": metrics["tasks"]}
    if previous:
        series[previous.get("label") or previous.get("stage") or "previous"] = previous["tasks"]
    series["majority baseline"] = metrics.get("baseline", {})
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2, 4.5), layout="constrained")
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        heights = [values.get(t, {}).get(metrics["tasks"][t]["primary"], np.nan) for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width, heights, width, label=name)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(series) - 1) / 2,
                  [f"{t.upper()}\n{metrics['tasks'][t]['primary']}" for t in tasks])
    ax.set_ylim(0, 1)
    ax.set_ylabel("primary metric")
    ax.grid(axis="y", alpha=0.3)
    columns = len(series) if len(tasks) >= 4 else 1  # narrow figures stack the entries
    fig.legend(loc="outside lower center", ncol=columns, frameon=False)
    return fig


def compare_table(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Every metric both evaluations have, side by side with the difference B - A."""
    from tabulate import tabulate

    rows = []
    for task in TASK_NAMES:
        ma, mb = a["tasks"].get(task), b["tasks"].get(task)
        if not ma or not mb:
            continue
        keys = [ma["primary"]] + sorted(k for k in ma if k in mb and k not in
                                        ("primary", ma["primary"], "n"))
        rows += [[task.upper(), key, f"{ma[key]:.3f}", f"{mb[key]:.3f}",
                  f"{mb[key] - ma[key]:+.3f}"] for key in keys]
    return tabulate(rows, headers=["task", "metric", *names, "B - A"], disable_numparse=True)
