"""A shortened quickstart (= `emoverse train m2se-tiny`), end to end on Ray: media stage,
two stages, evaluation; then re-running skips finished stages, and export merges."""

import json
from pathlib import Path

import pytest

from emoverse.model.checkpoint import load_model, parent_of, read_lineage

pytestmark = pytest.mark.integration

SHORT = ["stages.0.epochs=1", "stages.0.epoch_size=32", "stages.0.log_every=1",
         "stages.1.epochs=1", "stages.1.epoch_size=32", "stages.1.log_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import ray

    from emoverse.drivers.quickstart import run_quickstart

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield run_quickstart(tmp_path_factory.mktemp("qs") / "run", size=100, overrides=SHORT)
    finally:
        ray.shutdown()


def test_run_directory_has_config_checkpoints_and_metrics(run: Path):
    assert (run / "recipe.yaml").is_file() and (run / "loss.png").stat().st_size > 1000
    metrics = json.loads((run / "metrics.json").read_text())
    stages = list(metrics["stages"])
    assert stages == ["stage1-multitask-pretraining", "stage2-reason-finetuning"]
    # each stage is evaluated on the tasks trained so far: stage 1 was never asked ERI or ECPE
    assert set(metrics["stages"][stages[0]]["metrics"]) == {"msa", "mer", "fer"}
    assert set(metrics["stages"][stages[1]]["metrics"]) == {"msa", "mer", "fer", "eri", "ecpe"}
    for name in stages:
        report = run / "eval" / f"{name}-test"
        for part in ("predictions.parquet", "metrics.json", "metrics.png", "confusion_msa.png"):
            assert (report / part).is_file(), part
        assert metrics["stages"][name]["evaluation"] == str(report)
        assert (run / "ray" / f"{name}-mixture.json").is_file()
        lineage = metrics["stages"][name]["lineage"]
        assert lineage["step"] > 0 and lineage["losses"] and lineage["resumed_at_step"] is None
    assert set(metrics["baseline"]) == {"msa", "mer", "fer", "eri", "ecpe"}
    assert metrics["media"]["ok"] == metrics["media"]["clips"] > 0
    phases = json.loads((run / "phases.json").read_text())
    assert list(phases) == ["base model", "demo clips", "checks", "Ray start", "media stage",
                            *[f"{verb} {name}" for name in stages
                              for verb in ("train", "evaluate")]]
    assert all(seconds >= 0 for seconds in phases.values())


def test_stage_two_is_a_lora_adapter_on_stage_one(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())
    first = Path(metrics["stages"]["stage1-multitask-pretraining"]["checkpoint"])
    second = Path(metrics["stages"]["stage2-reason-finetuning"]["checkpoint"])
    assert (first / "model" / "model.safetensors").is_file()
    assert (second / "adapter" / "adapter_config.json").is_file()
    assert first == run / "checkpoints" / "stage1-multitask-pretraining"
    # parents inside the run are relative, so the run directory can move as a whole
    assert read_lineage(second)["parent"] == "../stage1-multitask-pretraining"
    assert read_lineage(first)["parent"] == "../../base-model"
    assert parent_of(second) == str(first)
    assert read_lineage(second)["mixture_seen"]["ecpe/*"] > 0
    load_model(second)  # base + adapter merge loads


def test_every_evaluation_sample_is_scored_once(run: Path):
    import pandas as pd

    from emoverse.emt.manifest import read_manifest

    manifest = read_manifest(run / "data" / "manifest.parquet").to_pandas()
    preds = pd.read_parquet(run / "eval" / "stage2-reason-finetuning-test" / "predictions.parquet")
    expected = set(manifest[manifest.split == "test"].sample_id)
    assert sorted(preds.sample_id) == sorted(expected)


def test_stage_workers_answer_as_model_actors_do_on_the_saved_checkpoint(run: Path, tmp_path):
    """The run's evaluations were answered by each stage's Ray Train workers with the model
    they trained; `emoverse eval run` answers on model actors from the saved checkpoint."""
    import pandas as pd

    from emoverse.cli import main

    for name in ("stage1-multitask-pretraining", "stage2-reason-finetuning"):
        ours = run / "eval" / f"{name}-test"
        mine = json.loads((ours / "metrics.json").read_text())
        assert mine["answered_by"] == "stage workers"
        out = tmp_path / name
        assert main(["eval", "run", "--model", str(run / "checkpoints" / name), "--out", str(out),
                     "--tasks", *mine["tasks"]]) == 0
        theirs = json.loads((out / "metrics.json").read_text())
        assert theirs["answered_by"] == "model actors"
        assert theirs["tasks"] == mine["tasks"]
        assert theirs["max_new_tokens"] == mine["max_new_tokens"]
        pd.testing.assert_frame_equal(pd.read_parquet(ours / "predictions.parquet"),
                                      pd.read_parquet(out / "predictions.parquet"),
                                      check_dtype=False)  # pandas' two string NA flavours


def test_rerun_skips_finished_stages_and_a_changed_recipe_is_refused(run: Path, capsys):
    from emoverse.drivers.training import train_recipe
    from emoverse.recipe import load_recipe

    before = (run / "metrics.json").read_text()
    recipe = load_recipe(run / "recipe.yaml")
    train_recipe(recipe, run)
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 2 and "] training" not in out
    assert (run / "metrics.json").read_text() == before
    with pytest.raises(ValueError, match="different recipe"):
        train_recipe(load_recipe(run / "recipe.yaml", ["stages.0.lr=0.5"]), run)


def test_export_merges_the_adapter_into_a_standalone_model(run: Path, tmp_path):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from emoverse.cli import main

    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "merged")
    AutoProcessor.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    reference = load_model(run / "checkpoints" / "stage2-reason-finetuning")
    for (name, a), (_, b) in zip(merged.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert main(["export", str(run), "--out", str(tmp_path / "merged")]) == 2  # not empty


def test_the_run_is_tracked_in_a_local_mlflow_store_offline(run: Path):
    from mlflow.tracking import MlflowClient

    from emoverse.drivers.quickstart import next_steps

    store = f"sqlite:///{run / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("m2se-tiny")
    assert experiment.artifact_location == (run / "mlartifacts").as_uri()
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId")
                  == parent.info.run_id) == ["stage1-multitask-pretraining",
                                             "stage2-reason-finetuning"]
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 3
    assert (run / "mlartifacts").is_dir()
    assert f"mlflow ui --backend-store-uri {store}" in next_steps(run)
