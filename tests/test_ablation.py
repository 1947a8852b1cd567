"""`emoverse ablate`: the single-stage arm sees each task as often as the stages did, over
the same samples; the summary is each task's metric per arm over the seeds."""

import pytest
import yaml

from emoverse.drivers.ablation import (ablation_table, run_ablation, single_stage,
                                       stage_samples, summarise)
from emoverse.recipe import apply_overrides, load_recipe


def task_samples(recipe):
    """Samples per task over the whole recipe, from each stage's weights."""
    totals = {}
    for stage, count in zip(recipe.stages, stage_samples(recipe)):
        weight = sum(e.weight for e in stage.mixture)
        for e in stage.mixture:
            totals[e.task] = totals.get(e.task, 0) + count * e.weight / weight
    return totals


def test_the_single_stage_sees_each_task_as_often_as_the_stages_did_in_the_same_steps():
    recipe = load_recipe("m2se-tiny")
    single = single_stage(recipe)
    [stage] = single.stages
    assert sum(stage_samples(single)) == pytest.approx(sum(stage_samples(recipe)), abs=8)
    staged, union = task_samples(recipe), task_samples(single)
    assert set(union) == set(staged) == {"msa", "fer", "mer", "eri", "ecpe"}
    for task in staged:
        assert union[task] == pytest.approx(staged[task], rel=1e-3)
    first = recipe.stages[0]
    assert (stage.trainable, stage.lr, stage.batch_size) == (first.trainable, first.lr,
                                                             first.batch_size)
    assert stage.epochs == sum(s.epochs for s in recipe.stages)
    assert single.deterministic == recipe.deterministic and single.media == recipe.media


def test_a_stage_without_an_epoch_size_cannot_be_ablated():
    recipe = load_recipe("m2se-paper")
    with pytest.raises(ValueError, match="epoch_size"):
        single_stage(recipe)


def test_the_summary_gives_each_arm_its_values_in_seed_order():
    def run(msa, ecpe=None):
        metrics = {"msa": {"primary": "accuracy", "accuracy": msa}}
        if ecpe is not None:
            metrics["ecpe"] = {"primary": "weighted_f1", "weighted_f1": ecpe}
        return metrics

    results = {"staged": {1: run(0.9, 0.5), 0: run(0.8, 0.7)},
               "single": {0: run(0.6, 0.2), 1: run(0.7, 0.4)}}
    rows = summarise(results)
    assert rows == [
        {"task": "ecpe", "metric": "weighted_f1", "staged": [0.7, 0.5], "single": [0.2, 0.4]},
        {"task": "msa", "metric": "accuracy", "staged": [0.8, 0.9], "single": [0.6, 0.7]}]
    text = ablation_table(rows, [0, 1])
    assert "0.600 ± 0.141" in text and "0.850 ± 0.071" in text


@pytest.mark.integration
def test_ablate_trains_both_arms_and_reuses_finished_runs(tmp_path):
    recipe = apply_overrides(load_recipe("m2se-tiny"), [
        "data.demo_size=160", "media.detector=haar", "stages.0.epochs=1",
        "stages.0.epoch_size=64", "stages.1.epochs=1", "stages.1.epoch_size=64",
        "eval.max_new_tokens=4"])
    import ray

    try:
        rows = run_ablation(recipe, tmp_path, seeds=[0])
        again = run_ablation(recipe, tmp_path, seeds=[0])  # every run finished: nothing trains
    finally:
        ray.shutdown()  # the runs started a local Ray; later tests start their own
    assert {r["task"] for r in rows} == {"msa", "fer", "mer", "eri", "ecpe"}
    assert all(len(r["staged"]) == len(r["single"]) == 1 for r in rows)
    saved = yaml.safe_load((tmp_path / "ablation.json").read_text())
    assert saved["rows"] == rows and saved["single_stage"]["name"] == "single-stage-union"
    assert again == rows
