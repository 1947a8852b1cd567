"""Evaluation reports without Ray: parsed predictions, figures, compare table."""

import json

import pandas as pd
import pytest

from emoverse.evaluation.report import (bars_figure, compare_table, parsed_predictions,
                                        write_report)
from emoverse.evaluation.scoring import score


def tiny_manifest():
    return pd.DataFrame({
        "sample_id": ["a", "b", "c", "d"], "task": ["msa", "msa", "mer", "mer"],
        "split": ["test"] * 4, "target": ["Positive.", "Negative.", "Joy.", "Anger."],
        "label_class": ["positive", "negative", "joy", "anger"], "label_score": [1.0, -2.0,
                                                                                None, None]})


def tiny_predictions():
    return pd.DataFrame({"sample_id": ["d", "c", "b", "a"], "task": ["mer", "mer", "msa", "msa"],
                         "prediction": ["Anger.", "sorrowful", "Positive.", "Positive."]})


def test_predictions_carry_gold_parse_and_error_in_sample_order():
    out = parsed_predictions(tiny_manifest(), tiny_predictions())
    assert out.sample_id.tolist() == ["a", "b", "c", "d"]
    assert out.target.tolist() == ["Positive.", "Negative.", "Joy.", "Anger."]
    assert json.loads(out.parsed[0]) == "positive" and pd.isna(out.parse_error[0])
    assert pd.isna(out.parsed[2]) and "not one of" in out.parse_error[2]


def test_report_is_complete_and_replaces_an_earlier_one(tmp_path):
    manifest, preds = tiny_manifest(), tiny_predictions()
    metrics = {"tasks": score(manifest, preds), "baseline": {}}
    assert metrics["tasks"]["msa"]["accuracy"] == 0.5
    assert metrics["tasks"]["msa"]["acc2_non_negative"] == 0.5
    out = tmp_path / "report"
    out.mkdir()
    (out / "stale.txt").write_text("from an interrupted run")
    write_report(out, metrics, preds, manifest, previous={"tasks": metrics["tasks"]})
    names = {p.name for p in out.iterdir()}
    assert names == {"metrics.json", "predictions.parquet", "metrics.png", "confusion_msa.png",
                     "confusion_mer.png"}
    assert not (tmp_path / "report.partial").exists()


@pytest.mark.parametrize("tasks", [["msa", "mer"], ["msa", "mer", "fer", "eri", "ecpe"]])
def test_metrics_figure_names_stages_and_keeps_its_legend_inside(tasks):
    scores = {t: {"primary": "accuracy", "accuracy": 0.9} for t in tasks}
    metrics = {"stage": "stage2-reason-finetuning", "tasks": scores,
               "baseline": {t: {"accuracy": 0.3} for t in tasks}}
    previous = {"label": "stage1-multitask-pretraining", "tasks": scores}
    fig = bars_figure(metrics, previous)
    fig.canvas.draw()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [
        "stage2-reason-finetuning", "stage1-multitask-pretraining", "majority baseline"]
    inside = fig.bbox
    for artist in [legend, *fig.axes[0].get_xticklabels()]:
        box = artist.get_window_extent()
        assert box.x0 >= inside.x0 and box.x1 <= inside.x1
        assert box.y0 >= inside.y0 and box.y1 <= inside.y1


def test_compare_table_lists_shared_metrics_with_differences():
    a = {"tasks": {"msa": {"primary": "accuracy", "accuracy": 0.5, "weighted_f1": 0.4,
                           "n": 4.0}}}
    b = {"tasks": {"msa": {"primary": "accuracy", "accuracy": 0.75, "weighted_f1": 0.7,
                           "n": 4.0}, "mer": {"primary": "accuracy", "accuracy": 1.0}}}
    lines = compare_table(a, b).splitlines()
    assert lines[2].split() == ["MSA", "accuracy", "0.500", "0.750", "+0.250"]
    assert lines[3].split() == ["MSA", "weighted_f1", "0.400", "0.700", "+0.300"]
    assert len(lines) == 4  # MER is only in B; n is not a metric


@pytest.mark.parametrize("args, message", [
    (["--model", "missing-dir"], "does not exist"),
    ([], "give --model"),
    (["--model", "TMP", "detector=haar"], "unknown section(s) detector"),
    (["--model", "TMP", "--manifest", "m.parquet", "eval.split=dev"], "field 'split'"),
])
def test_eval_rejects_bad_input(args, message, capsys, tmp_path):
    from emoverse.cli import main

    assert main(["eval", "run", *[str(tmp_path) if a == "TMP" else a for a in args]]) == 2
    assert message in capsys.readouterr().err
