"""Fault tolerance of a stage on Ray Train: a killed worker and a killed driver both resume
from the last checkpoint with the step count restored, not from step zero."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from emoverse.model.checkpoint import read_lineage

pytestmark = pytest.mark.integration

MEDIA = {"num_frames": 4, "size": 56, "detector": "haar"}


def long_stage(name: str = "stage1") -> dict:
    """Enough steps (and checkpoints) that a failure lands in the middle of the stage."""
    return {"name": name, "mixture": [{"task": "msa", "weight": 1.0}, {"task": "mer", "weight": 1.0}],
            "epochs": 4, "epoch_size": 480, "batch_size": 8, "lr": 1e-3, "max_length": 512,
            "checkpoint_every": 10, "log_every": 10,
            "trainable": {"mode": "full", "vision": True}}


def latest_step(storage: Path) -> int:
    """The step of the newest resumable checkpoint Ray Train has persisted under `storage`."""
    steps = []
    for path in storage.glob("*/checkpoint_*/loop_state.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except json.JSONDecodeError:  # still being written
            pass
    return max(steps, default=0)


def wait_for_checkpoint(storage: Path, done, timeout: float = 240) -> int:
    start = time.time()
    while time.time() - start < timeout and not done():
        step = latest_step(storage)
        if step >= 20:
            return step
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint at step >= 20 under {storage} in {timeout}s")


def kill_a_train_worker() -> None:
    """SIGKILL one Ray Train worker process of the Ray instance this process started."""
    import psutil
    import ray

    session = ray._private.worker._global_node.get_session_dir_path()
    raylet = next(p for p in psutil.process_iter(["cmdline"])
                  if "raylet" in " ".join(p.info["cmdline"] or [])[:200]
                  and session in " ".join(p.info["cmdline"] or []))
    workers = [p for p in raylet.children(recursive=True)  # this test's Ray only
               if "RayTrainWorker" in " ".join(p.cmdline())]
    assert workers, "no Ray Train worker process found"
    workers[-1].send_signal(signal.SIGKILL)


def test_a_killed_worker_is_replaced_and_resumes_at_the_checkpointed_step(tiny_model, demo_set,
                                                                          tmp_path):
    import ray

    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.stage_trainer import fit_stage
    from emoverse.recipe import MediaConfig, ScalingConfig, StageConfig

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    cache = run_media_stage(demo_set, MediaConfig(**MEDIA), tmp_path / "cache")
    stage = StageConfig(**long_stage())
    result: dict = {}

    def fit():
        result["checkpoint"], _ = fit_stage(stage, cache, tiny_model, tmp_path / "ray",
                                         ScalingConfig(max_failures=2),
                                         {"parent": str(tiny_model)})

    thread = threading.Thread(target=fit)
    thread.start()
    killed_after = wait_for_checkpoint(tmp_path / "ray", lambda: not thread.is_alive())
    kill_a_train_worker()
    thread.join(timeout=600)
    lineage = read_lineage(result["checkpoint"])
    # The checkpoint on disk when the worker died, or the one before it when the kill came
    # before every worker had reported it (Ray Train registers it only then).
    assert lineage["resumed_at_step"] in (killed_after, killed_after - 10)
    assert 0 < lineage["resumed_at_step"] < lineage["step"]  # mid-stage, not from zero
    ray.shutdown()


def test_a_restarted_driver_resumes_the_run_on_the_batches_it_would_have_seen(tmp_path):
    import torch

    from emoverse.model.checkpoint import load_model

    recipe = {"name": "resume-test", "base_model": "tiny", "data": {"demo_size": 80},
              "deterministic": True, "media": MEDIA, "stages": [{**long_stage(), "epochs": 2}]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run_dir = tmp_path / "run"

    def command(run: Path) -> list[str]:
        return [sys.executable, "-m", "emoverse", "train", str(tmp_path / "recipe.yaml"),
                "--run-dir", str(run), "--no-eval"]

    cmd = command(run_dir)
    env = {**os.environ, "RAY_ADDRESS": ""}
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        killed_after = wait_for_checkpoint(run_dir / "ray", lambda: first.poll() is not None)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray it started
        first.wait()
    assert not (run_dir / "checkpoints" / "stage1" / "lineage.json").exists()

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    lineage = read_lineage(run_dir / "checkpoints" / "stage1")
    assert lineage["resumed_at_step"] in (killed_after, killed_after - 10)
    assert lineage["resumed_at_step"] > 0
    assert lineage["step"] > lineage["resumed_at_step"]

    # The deterministic recipe uninterrupted: the same losses at every logged step, the
    # same weights.
    whole = subprocess.run(command(tmp_path / "whole"), env=env, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = read_lineage(tmp_path / "whole" / "checkpoints" / "stage1")
    assert uninterrupted["losses"] == lineage["losses"]
    a = load_model(tmp_path / "whole" / "checkpoints" / "stage1").state_dict()
    b = load_model(run_dir / "checkpoints" / "stage1").state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_a_stage_runs_with_the_deepspeed_zero2_strategy(tiny_model, demo_set, tmp_path):
    import ray

    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.stage_trainer import fit_stage
    from emoverse.model.checkpoint import load_model
    from emoverse.recipe import MediaConfig, ScalingConfig, StageConfig

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    cache = run_media_stage(demo_set, MediaConfig(**MEDIA), tmp_path / "cache")
    stage = StageConfig(**{**long_stage(), "epochs": 1, "epoch_size": 160, "log_every": 2,
                           "checkpoint_every": None, "grad_accum": 2,
                           "strategy": {"kind": "deepspeed", "zero_stage": 2}})
    checkpoint, _ = fit_stage(stage, cache, tiny_model, tmp_path / "ray", ScalingConfig(),
                           {"parent": str(tiny_model)})
    lineage = read_lineage(checkpoint)
    assert lineage["step"] == 10  # 160 samples / (batch 8 x accumulation 2)
    assert lineage["losses"][-1] < lineage["losses"][0]
    assert (checkpoint / "engine").is_dir()  # DeepSpeed's own resumable state
    load_model(checkpoint)  # the Hugging Face weights load back
    ray.shutdown()


def test_a_stage_validates_its_final_checkpoint_and_reports_the_objective(tiny_model, demo_set,
                                                                         tmp_path):
    import ray

    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.stage_trainer import fit_stage
    from emoverse.emt.manifest import read_manifest
    from emoverse.recipe import MediaConfig, ScalingConfig, StageConfig

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    cache = run_media_stage(demo_set, MediaConfig(**MEDIA), tmp_path / "cache")
    stage = StageConfig(**{**long_stage(), "epochs": 1, "epoch_size": 32,
                           "checkpoint_every": None})
    validation = {"cache_dir": str(cache), "manifest": str(demo_set), "split": "valid",
                  "max_new_tokens": 8, "batch_size": 16}
    _, reported = fit_stage(stage, cache, tiny_model, tmp_path / "ray", ScalingConfig(),
                            {"parent": str(tiny_model)}, validation=validation)
    manifest = read_manifest(demo_set).to_pandas()
    assert reported["validated"] == (manifest.split == "valid").sum()
    assert 0.0 <= reported["objective"] <= 1.0 and "msa/accuracy" in reported
    ray.shutdown()
