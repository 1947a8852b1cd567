"""`emoverse eval` end to end on Ray: every sample once, a complete report, and identical
numbers after an interrupted run is re-run."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from emoverse.emt.manifest import read_manifest

pytestmark = pytest.mark.integration

MEDIA = ["media.num_frames=4", "media.size=56"]


def eval_args(model, manifest, out, cache):
    return ["eval", "run", "--model", str(model), "--manifest", str(manifest), "--out", str(out),
            "--cache", str(cache), "eval.max_new_tokens=6", "eval.batch_size=8", *MEDIA]


@pytest.fixture(scope="module")
def first_report(tiny_model, demo_set, tmp_path_factory):
    import ray

    from emoverse.cli import main

    out = tmp_path_factory.mktemp("eval") / "a"
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        assert main(eval_args(tiny_model, demo_set, out, out.parent / "cache")) == 0
    finally:
        ray.shutdown()
    return out


def test_every_test_sample_is_scored_exactly_once_with_hashes(first_report, demo_set):
    manifest = read_manifest(demo_set).to_pandas()
    preds = pd.read_parquet(first_report / "predictions.parquet")
    assert sorted(preds.sample_id) == sorted(manifest[manifest.split == "test"].sample_id)
    metrics = json.loads((first_report / "metrics.json").read_text())
    assert metrics["model_hash"] and metrics["manifest_hash"] and metrics["decoding"] == "greedy"
    assert set(metrics["tasks"]) == set(manifest[manifest.split == "test"].task)
    # an untrained model mostly answers nonsense: counted per task, never turned into a class
    assert sum(metrics["unparsed_counts"].values()) == preds.parse_error.notna().sum()


def test_an_interrupted_evaluation_rerun_gives_identical_numbers(first_report, tiny_model,
                                                                  demo_set, tmp_path):
    out, cache = tmp_path / "b", tmp_path / "cache"
    cmd = [sys.executable, "-m", "emoverse", *eval_args(tiny_model, demo_set, out, cache)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    start = time.time()
    while not list(cache.glob("*/stats.json")) and time.time() - start < 180:
        time.sleep(0.2)  # interrupt once the media stage is done, before the answers are in
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert not (out / "metrics.json").exists()  # nothing half-written
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    a = json.loads((first_report / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert a["tasks"] == b["tasks"] and a["unparsed_counts"] == b["unparsed_counts"]
    pa = pd.read_parquet(first_report / "predictions.parquet")
    pb = pd.read_parquet(out / "predictions.parquet")
    assert pa.prediction.tolist() == pb.prediction.tolist()


def test_compare_prints_both_reports(first_report, capsys):
    from emoverse.cli import main

    assert main(["eval", "compare", str(first_report), str(first_report)]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "+0.000" in out
