"""A shortened quickstart, end to end on Ray (media stage, two stages, evaluation)."""

import json
from pathlib import Path

import pytest

from emoverse.model.checkpoint import load_model, read_lineage

pytestmark = pytest.mark.integration

SHORT = ["stages.0.epochs=1", "stages.0.epoch_size=32", "stages.0.log_every=1",
         "stages.1.epochs=1", "stages.1.epoch_size=32", "stages.1.log_every=1"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import ray

    from emoverse.quickstart import run_quickstart

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield run_quickstart(tmp_path_factory.mktemp("qs") / "run", size=100, overrides=SHORT)
    finally:
        ray.shutdown()


def test_run_directory_has_config_checkpoints_and_metrics(run: Path):
    assert (run / "recipe.yaml").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    stages = list(metrics["stages"])
    assert stages == ["stage1-multitask-pretraining", "stage2-reason-finetuning"]
    for name in stages:
        assert set(metrics["stages"][name]["metrics"]) == {"msa", "mer", "fer", "eri", "ecpe"}
        assert (run / f"{name}-predictions.parquet").is_file()
        assert (run / f"{name}-mixture.json").is_file()
    assert set(metrics["baseline"]) == {"msa", "mer", "fer", "eri", "ecpe"}
    assert metrics["media"]["ok"] == metrics["media"]["clips"] > 0


def test_stage_two_is_a_lora_adapter_on_stage_one(run: Path):
    metrics = json.loads((run / "metrics.json").read_text())
    first = Path(metrics["stages"]["stage1-multitask-pretraining"]["checkpoint"])
    second = Path(metrics["stages"]["stage2-reason-finetuning"]["checkpoint"])
    assert (first / "model" / "model.safetensors").is_file()
    assert (second / "adapter" / "adapter_config.json").is_file()
    assert read_lineage(second)["parent"] == str(first)
    assert read_lineage(first)["parent"] == str(run / "base-model")
    assert read_lineage(second)["mixture_seen"]["ecpe/*"] > 0
    load_model(second)  # base + adapter merge loads


def test_every_evaluation_sample_is_scored_once(run: Path):
    import pandas as pd

    from emoverse.emt.manifest import read_manifest

    manifest = read_manifest(run / "data" / "manifest.parquet").to_pandas()
    preds = pd.read_parquet(run / "stage2-reason-finetuning-predictions.parquet")
    expected = set(manifest[manifest.split == "test"].sample_id)
    assert sorted(preds.sample_id) == sorted(expected)
