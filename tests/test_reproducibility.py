"""Reproducible runs: the same stage, data and seed give the same losses, weights and
answers; another seed gives others; a resumed run ends where an uninterrupted one does.
Without Ray on a LocalSession (fast), and on Ray Train with a killed worker (integration)."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch

from emoverse.model.checkpoint import load_model, read_lineage
from emoverse.recipe import TrainableConfig, load_recipe, stage_seed
from emoverse.train.reproducibility import library_versions, metrics_digest
from emoverse.train.stage import LocalSession, read_predictions, train

from test_stage import DiesAtStep, Interrupted, job, rows

# LoRA with dropout: the masks are drawn from torch's generator, which a deterministic run
# seeds per micro-batch
LORA = TrainableConfig(mode="lora", lora={"r": 4, "alpha": 8, "dropout": 0.3})


def deterministic_job(model, seed=0, **stage):
    from dataclasses import replace

    base = job(model, trainable=LORA, seed=seed, **stage)
    return replace(base, deterministic=True)


def losses(session):
    return [r["loss"] for r in session.reports if "final" not in r]


def weights(checkpoint):
    return load_model(checkpoint).state_dict()


def assert_same_weights(a, b):
    a, b = weights(a), weights(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_the_same_seed_gives_the_same_losses_and_weights_and_another_seed_others(tiny_model,
                                                                                  tmp_path):
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("other", 1)]:
        session = LocalSession(rows(), tmp_path / name, seed=seed)
        train(deterministic_job(tiny_model, seed=seed, epochs=2), session)
        runs[name] = session
    assert losses(runs["a"]) == losses(runs["b"])  # exactly, at every logged step
    assert_same_weights(runs["a"].latest_checkpoint(), runs["b"].latest_checkpoint())
    assert losses(runs["other"]) != losses(runs["a"])


def test_a_run_resumed_mid_window_logs_and_ends_as_an_uninterrupted_one(tiny_model, tmp_path):
    stage = {"checkpoint_every": 3, "log_every": 2, "epochs": 2}  # checkpoint 3: mid-window
    whole = LocalSession(rows(), tmp_path / "whole")
    train(deterministic_job(tiny_model, **stage), whole)
    with pytest.raises(Interrupted):
        train(deterministic_job(tiny_model, **stage), DiesAtStep(rows(), tmp_path / "cut", step=3))
    resumed = LocalSession(rows(), tmp_path / "cut")
    train(deterministic_job(tiny_model, **stage), resumed)
    final = read_lineage(resumed.latest_checkpoint())
    assert final["resumed_at_step"] == 3
    assert final["losses"] == read_lineage(whole.latest_checkpoint())["losses"]
    assert_same_weights(whole.latest_checkpoint(), resumed.latest_checkpoint())


def test_a_run_seed_draws_each_stage_a_seed_of_its_own():
    recipe = load_recipe("m2se-tiny")
    assert recipe.deterministic  # the quickstart's recipe is reproducible by default
    assert [recipe.seeded_stage(s).seed for s in recipe.stages] == [s.seed for s in recipe.stages]
    other = load_recipe("m2se-tiny", ["seed=1"])
    seeds = [other.seeded_stage(s).seed for s in other.stages]
    assert seeds != [s.seed for s in recipe.stages] and all(0 <= s < 2**31 for s in seeds)
    assert stage_seed(1, 0) == stage_seed(1, 0) != stage_seed(2, 0) != stage_seed(1, 1)
    assert other.digest() != recipe.digest()


def test_lineage_facts_and_the_metrics_digest():
    versions = library_versions()
    assert versions["torch"] == torch.__version__.split("+")[0] or versions["torch"]
    assert versions["python"] and "ray" in versions and "transformers" in versions
    metrics = {"stage1": {"metrics": {"msa": {"accuracy": 0.75}}, "losses": [1.5, 0.5]}}
    assert metrics_digest(metrics) == metrics_digest({**metrics})
    changed = {"stage1": {"metrics": {"msa": {"accuracy": 0.75 + 1e-12}}, "losses": [1.5, 0.5]}}
    assert metrics_digest(changed) != metrics_digest(metrics)


# On Ray Train: 2 DDP workers, each its own seeded share of the epoch.

MEDIA = {"num_frames": 4, "size": 56, "detector": "haar"}
STAGE = {"name": "stage1", "mixture": [{"task": "msa", "weight": 1.0},
                                       {"task": "mer", "weight": 1.0}],
         "epochs": 2, "epoch_size": 240, "batch_size": 8, "lr": 1e-3, "max_length": 512,
         "checkpoint_every": 10, "log_every": 5,
         "trainable": {"mode": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}}
PREDICT = {"split": "valid", "tasks": None, "max_new_tokens": 6, "batch_size": 16}


@pytest.fixture(scope="module")
def on_ray(tiny_model, demo_set, tmp_path_factory):
    """A media cache, and a function fitting STAGE deterministically into a new directory."""
    import ray

    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.stage_trainer import fit_stage
    from emoverse.recipe import MediaConfig, ScalingConfig, StageConfig

    root = tmp_path_factory.mktemp("reproducible")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    cache = run_media_stage(demo_set, MediaConfig(**MEDIA), root / "cache", ordered=True)

    def fit(name: str, seed: int = 0):
        stage = StageConfig(**{**STAGE, "seed": seed})
        checkpoint, _ = fit_stage(stage, cache, tiny_model, root / name,
                                  ScalingConfig(max_failures=2), {"parent": str(tiny_model)},
                                  predict=PREDICT, deterministic=True)
        return checkpoint

    yield fit, root
    ray.shutdown()


def answers(checkpoint) -> pd.DataFrame:
    return read_predictions(checkpoint).sort_values("sample_id").reset_index(drop=True)


@pytest.fixture(scope="module")
def first(on_ray):
    fit, _ = on_ray
    return fit("first")


@pytest.mark.integration
def test_two_runs_on_ray_train_give_the_same_losses_weights_and_answers(on_ray, first):
    fit, _ = on_ray
    again = fit("again")
    a, b = read_lineage(first), read_lineage(again)
    assert a["step"] == b["step"] == 60 and len(a["losses"]) == 12
    assert a["losses"] == b["losses"]
    assert a["deterministic"] and a["seed"] == 0 and a["world_size"] == 2
    assert a["data_order"] and a["versions"]["ray"]  # the training worker's
    assert a["driver_versions"]["torch"] == a["versions"]["torch"]
    assert_same_weights(first, again)
    pd.testing.assert_frame_equal(answers(first), answers(again))
    assert len(answers(first)) > 0


@pytest.mark.integration
def test_another_seed_on_ray_train_gives_other_losses(on_ray, first):
    fit, _ = on_ray
    other = read_lineage(fit("other", seed=1))
    assert other["losses"] != read_lineage(first)["losses"]


@pytest.mark.integration
def test_a_killed_worker_resumes_on_the_batches_it_would_have_seen(on_ray, first):
    from test_training import kill_a_train_worker, wait_for_checkpoint

    fit, root = on_ray
    done: dict = {}
    thread = threading.Thread(target=lambda: done.update(checkpoint=fit("killed")))
    thread.start()
    wait_for_checkpoint(root / "killed", lambda: not thread.is_alive())
    kill_a_train_worker()
    thread.join(timeout=600)
    resumed = read_lineage(done["checkpoint"])
    assert 0 < resumed["resumed_at_step"] < resumed["step"]
    assert resumed["losses"] == read_lineage(first)["losses"]
    assert_same_weights(first, done["checkpoint"])
    pd.testing.assert_frame_equal(answers(first), answers(done["checkpoint"]))
    assert np.isfinite(resumed["loss"])
