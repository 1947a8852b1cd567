"""Sweeps: the space and its trial overrides without Ray; a 4-trial ASHA sweep end to end."""

import pytest
import yaml

from emoverse.recipe import apply_overrides, load_recipe
from emoverse.sweep import SweepSpace, trial_overrides

S1, S2 = "stage1-multitask-pretraining", "stage2-reason-finetuning"


def test_trial_weights_are_normalised_to_the_searched_entries_total():
    recipe = load_recipe("m2se-tiny")  # stage 2: eri 1.0, mer 1.0, ecpe 1.5, msa 0.3, fer 0.3
    space = SweepSpace(stages={S2: {"weights": {"eri": (0.1, 1), "ecpe": (0.1, 1)}, "lr": (1e-4, 1e-2),
                                    "lora_r": [8, 32]}})
    space.check(recipe)
    params = {f"{S2}/eri": 0.2, f"{S2}/ecpe": 0.6, f"{S2}/lr": 0.001, f"{S2}/lora_r": 8}
    trial = apply_overrides(recipe, trial_overrides(recipe, space, params))
    weights = {e.task: e.weight for e in trial.stage(S2).mixture}
    assert weights["eri"] == pytest.approx(2.5 * 0.25) and weights["ecpe"] == pytest.approx(2.5 * 0.75)
    assert weights["mer"] == 1.0 and weights["msa"] == 0.3  # not searched: unchanged
    assert trial.stage(S2).lr == 0.001 and trial.stage(S2).trainable.lora.r == 8


def test_a_space_naming_unknown_entries_is_refused():
    recipe = load_recipe("m2se-tiny")
    with pytest.raises(ValueError, match="no mixture entries"):
        SweepSpace(stages={S1: {"weights": {"ecpe": (0.1, 1)}}}).check(recipe)
    with pytest.raises(ValueError, match="not a LoRA stage"):
        SweepSpace(stages={S1: {"lora_r": [8]}}).check(recipe)
    with pytest.raises(KeyError, match="no stage"):
        SweepSpace(stages={"nope": {}}).check(recipe)
    with pytest.raises(ValueError, match="empty"):
        SweepSpace(stages={S1: {"weights": {"msa": (1.0, 0.1)}}})


@pytest.mark.integration
def test_a_four_trial_sweep_stops_early_and_exports_a_recipe_that_trains(tmp_path, capsys):
    import ray

    from emoverse.cli import main
    from emoverse.pipeline import train_recipe

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"stages": {
        S1: {"weights": {"msa": [0.05, 1.0], "fer": [0.05, 1.0], "mer": [0.05, 1.0]}},
        S2: {"weights": {"eri": [0.1, 1.0], "ecpe": [0.1, 1.0]}}}}))
    short = ["data.demo_size=160", "eval.batch_size=64", "stages.0.epochs=2",
             "stages.0.epoch_size=1600", "stages.0.log_every=50", "stages.1.epochs=1",
             "stages.1.epoch_size=160", "stages.1.log_every=5"]
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        assert main(["sweep", "m2se-tiny", *short, "--space", str(space), "--trials", "4",
                     "--sweep-dir", str(tmp_path / "sweep")]) == 0
    finally:
        ray.shutdown()
    import pandas as pd

    trials = pd.read_csv(tmp_path / "sweep" / "trials.csv")
    assert len(trials) == 4 and set(trials.status) <= {"finished", "stopped early"}
    assert (trials.stages < 2).any(), "ASHA stopped no trial after stage 1"
    assert (tmp_path / "sweep" / "objective.png").stat().st_size > 1000
    best = load_recipe(tmp_path / "sweep" / "best-recipe.yaml")
    assert best.eval.validate_split == "valid"
    quick = apply_overrides(best, ["stages.0.epochs=1", "stages.0.epoch_size=32",
                                   "stages.1.epoch_size=32"])
    try:
        train_recipe(quick, tmp_path / "best-run", evaluate=False)
    finally:
        ray.shutdown()
    assert (tmp_path / "best-run" / "checkpoints" / S2 / "lineage.json").is_file()
