"""Sweeps: the space, its points and trial overrides without Ray; an interrupted 4-trial
ASHA sweep resumed and run end to end."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from emoverse.recipe import apply_overrides, load_recipe
from emoverse.sweep_space import (SweepSpace, load_space, point_params, recipe_point, shipped_spaces,
                            trial_overrides)

S1, S2 = "stage1-multitask-pretraining", "stage2-reason-finetuning"


def stage_weights(recipe, stage: str) -> dict[str, float]:
    return {e.task: e.weight for e in recipe.stage(stage).mixture}


def test_trial_weights_are_normalised_to_the_searched_entries_total():
    recipe = load_recipe("m2se-tiny")  # stage 2: eri, mer, ecpe, msa, fer
    shipped = stage_weights(recipe, S2)
    total = shipped["eri"] + shipped["ecpe"]
    space = SweepSpace(stages={S2: {"weights": {"eri": (0.1, 1), "ecpe": (0.1, 1)}, "lr": (1e-4, 1e-2),
                                    "lora_r": [8, 32]}})
    space.check(recipe)
    params = {f"{S2}/eri": 0.2, f"{S2}/ecpe": 0.6, f"{S2}/lr": 0.001, f"{S2}/lora_r": 8}
    trial = apply_overrides(recipe, trial_overrides(recipe, space, params))
    weights = stage_weights(trial, S2)
    assert weights["eri"] == pytest.approx(total * 0.25)
    assert weights["ecpe"] == pytest.approx(total * 0.75)
    assert weights["mer"] == shipped["mer"] and weights["msa"] == shipped["msa"]  # unchanged
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


def test_points_must_be_complete_and_inside_the_space():
    stages = {S2: {"weights": {"eri": (0.1, 1), "ecpe": (0.1, 1)}, "lora_r": [8, 32]}}
    good = {S2: {"weights": {"eri": 0.5, "ecpe": 0.1}, "lora_r": 8}}
    assert point_params(SweepSpace(stages=stages, points=[good]).points[0]) == {
        f"{S2}/eri": 0.5, f"{S2}/ecpe": 0.1, f"{S2}/lora_r": 8}
    for bad, message in [({S2: {"weights": {"eri": 0.5}, "lora_r": 8}}, "exactly the searched"),
                         ({S2: {"weights": {"eri": 2.0, "ecpe": 0.1}, "lora_r": 8}}, "outside"),
                         ({S2: {"weights": {"eri": 0.5, "ecpe": 0.1}, "lora_r": 16}}, "lora_r"),
                         ({S1: good[S2]}, "names stages")]:
        with pytest.raises(ValueError, match=message):
            SweepSpace(stages=stages, points=[bad])


def test_the_recipes_own_values_are_scaled_into_the_space_as_the_first_point():
    recipe = load_recipe("m2se-tiny")
    shipped = stage_weights(recipe, S2)
    ratio = shipped["ecpe"] / shipped["eri"]
    assert 2 < ratio < 10  # inside the space below; out of reach of the narrow one
    space = SweepSpace(stages={S2: {"weights": {"eri": (0.1, 1), "ecpe": (0.1, 1)}}})
    point = recipe_point(recipe, space)[S2]
    assert point.weights["ecpe"] / point.weights["eri"] == pytest.approx(ratio)
    trial = apply_overrides(recipe, trial_overrides(recipe, space, point_params({S2: point})))
    assert [e.weight for e in trial.stage(S2).mixture] == pytest.approx(
        [e.weight for e in recipe.stage(S2).mixture])  # the recipe as written
    narrow = SweepSpace(stages={S2: {"weights": {"eri": (0.1, 0.2), "ecpe": (0.1, 0.2)}}})
    assert recipe_point(recipe, narrow) is None  # ecpe/eri at most 2


def stage_one_lineages(sweep: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in sweep.glob(f"stages/*/checkpoints/{S1}/lineage.json")}


@pytest.mark.integration
def test_an_interrupted_four_trial_sweep_resumes_stops_early_and_exports_a_recipe_that_trains(
        tmp_path):
    import ray

    from emoverse.cli import main
    from emoverse.drivers.training import train_recipe

    space = tmp_path / "space.yaml"
    # Trial 1 is the recipe as written, trial 2 this point, whose stage-1 learning rate
    # leaves the random model untrained: its stage-1 objective (0: nothing parses) is
    # below trial 1's whatever the noise of a small validation split, so ASHA stops it.
    space.write_text(yaml.safe_dump({
        "stages": {S1: {"weights": {"msa": [0.01, 1.0], "fer": [0.01, 1.0], "mer": [0.01, 1.0]},
                        "lr": [1.0e-7, 5.0e-3]},
                   S2: {"weights": {"eri": [0.1, 1.0], "ecpe": [0.1, 1.0]}}},
        "points": [{S1: {"weights": {"msa": 0.01, "fer": 0.01, "mer": 1.0}, "lr": 1.0e-7},
                    S2: {"weights": {"eri": 0.5, "ecpe": 0.5}}}]}))
    short = ["data.demo_size=400", "eval.batch_size=64", "stages.0.epochs=2",
             "stages.0.epoch_size=1600", "stages.0.log_every=50", "stages.1.epochs=1",
             "stages.1.epoch_size=160", "stages.1.log_every=5"]
    sweep = tmp_path / "sweep"
    args = ["sweep", "m2se-tiny", *short, "--space", str(space), "--trials", "4",
            "--sweep-dir", str(sweep)]

    # Interrupt the sweep (driver and its Ray) once trial 1 has finished stage 1.
    first = subprocess.Popen([sys.executable, "-m", "emoverse", *args],
                             env={**os.environ, "RAY_ADDRESS": ""}, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while not stage_one_lineages(sweep) and first.poll() is None and time.time() < deadline:
            time.sleep(0.5)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    kept = stage_one_lineages(sweep)
    assert len(kept) == 1, "the sweep was not interrupted after trial 1's stage 1"
    assert not (sweep / "trials.csv").exists()

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        assert main(args) == 0
    finally:
        ray.shutdown()
    import pandas as pd

    trials = pd.read_csv(sweep / "trials.csv")
    assert len(trials) == 4 and set(trials.status) <= {"finished", "stopped early"}
    point = trials[trials[f"{S1}/msa"] == 0.01]
    assert len(point) == 1 and point.stages.item() == 1, "ASHA did not stop the weak trial"
    assert (trials.stages == 2).any()
    # Trial 1's stage 1 was reused after the interruption, not trained again.
    assert {p: t for p, t in stage_one_lineages(sweep).items() if p in kept} == kept
    assert (sweep / "objective.png").stat().st_size > 1000
    best = load_recipe(sweep / "best-recipe.yaml")
    assert best.eval.validate_split == "valid"
    quick = apply_overrides(best, ["stages.0.epochs=1", "stages.0.epoch_size=32",
                                   "stages.1.epoch_size=32"])
    try:
        train_recipe(quick, tmp_path / "best-run", evaluate=False)
    finally:
        ray.shutdown()
    assert (tmp_path / "best-run" / "checkpoints" / S2 / "lineage.json").is_file()


@pytest.mark.parametrize("name", shipped_spaces())
def test_every_shipped_space_loads_and_fits_its_recipe(name):
    space = load_space(name)
    space.check(load_recipe(name.split("-mixture")[0]))
    assert recipe_point(load_recipe(name.split("-mixture")[0]), space) is not None


def test_a_malformed_space_file_is_named_in_the_error(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("stages:\n  s1: {weights: {msa: [1.0]}}\n")
    with pytest.raises(ValueError, match="space.yaml"):
        load_space(bad)
    with pytest.raises(FileNotFoundError, match="shipped"):
        load_space("no-such-space")
