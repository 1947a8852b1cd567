"""Experiment tracking against a real MLflow tracking server (`mlflow server` on loopback):
a stage's step metrics from rank 0 and a server going away mid-stage without Ray (fast);
an unreachable server refused before any work; a short recipe run and a two-trial sweep
on Ray (integration), read back through MLflow's client."""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from emoverse.recipe import load_recipe
from emoverse.tracking.runs import PARENT, flat_metrics, flat_params
from emoverse.tracking.sender import StepTracking, TrackingUnreachable
from emoverse.train.stage import LocalSession, train

from test_stage import job, rows

S1, S2 = "stage1-multitask-pretraining", "stage2-reason-finetuning"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` on a free loopback port, its store and artifacts under `root`."""

    def __init__(self, root: Path):
        root.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{free_port()}"
        self.log = root / "server.log"
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
             "--port", self.uri.rsplit(":", 1)[1], "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
             "--artifacts-destination", str(root / "artifacts")],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=2)
                return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {self.log.read_text()[-2000:]}")

    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.uri)

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = Server(tmp_path_factory.mktemp("mlflow"))
    yield running
    running.stop()


def stage_run(client, name="s"):
    experiment = client.create_experiment(f"steps-{time.time_ns()}")
    return client.create_run(experiment, run_name=name).info.run_id


def history(client, run_id, key):
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_settings_and_metrics_flatten_as_mlflow_names():
    stage = load_recipe("m2se-tiny").stages[1].model_dump(mode="json")
    params = flat_params(stage)
    ecpe = next(e for e in stage["mixture"] if e["task"] == "ecpe")
    assert params["mixture.ecpe"] == str(ecpe["weight"])
    assert params["trainable.lora.r"] == str(stage["trainable"]["lora"]["r"])
    assert params["lr"] == str(stage["lr"]) and json.loads(params["trainable.lora.modules_to_save"]) \
        == stage["trainable"]["lora"]["modules_to_save"]
    assert flat_metrics({"msa": {"accuracy": 0.5, "n": 3, "ok": True, "label": "x"}}, "test") == {
        "test/msa/accuracy": 0.5, "test/msa/n": 3.0}


def test_rank_0_logs_each_stages_step_metrics(server, tiny_model, tmp_path):
    client = server.client()
    run_id = stage_run(client)
    session = LocalSession(rows(), tmp_path / "s")
    train(replace(job(tiny_model, epochs=2), tracking=StepTracking(server.uri, run_id, 30)),
          session)
    reported = [(r["step"], r["loss"]) for r in session.reports if "final" not in r]
    logged = history(client, run_id, "loss")
    assert [s for s, _ in logged] == [s for s, _ in reported] == [2, 4, 6, 8]
    assert [v for _, v in logged] == pytest.approx([v for _, v in reported])
    for key in ("lr", "samples_per_second", "data_wait_fraction"):
        assert [step for step, _ in history(client, run_id, key)] == [s for s, _ in reported]


class ServerDiesAtStep(LocalSession):
    """A session whose tracking server goes away when `step` is reported."""

    def __init__(self, *args, server: Server, step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.server, self.step = server, step

    def report(self, metrics, checkpoint=None, validate=False):
        super().report(metrics, checkpoint, validate)
        if metrics["step"] == self.step:
            self.server.stop()


def test_a_server_lost_mid_stage_is_logged_and_training_goes_on(tiny_model, tmp_path, caplog):
    doomed = Server(tmp_path / "doomed")
    run_id = stage_run(doomed.client())
    session = ServerDiesAtStep(rows(), tmp_path / "s", server=doomed, step=4)
    caplog.set_level(logging.WARNING, logger="emoverse")
    start = time.monotonic()
    state = train(replace(job(tiny_model, epochs=2),
                          tracking=StepTracking(doomed.uri, run_id, patience_s=3)), session)
    assert state.step == 8 and session.latest_checkpoint() is not None
    assert time.monotonic() - start < 120  # MLflow's own retries take minutes
    said = caplog.text
    assert f"MLflow at {doomed.uri}" in said and "training goes on" in said
    assert "not sent" in said  # the stage's end waited its patience, then left them


def test_an_unreachable_server_fails_the_run_before_any_work(tmp_path):
    from emoverse.drivers.training import train_recipe

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    recipe = load_recipe("m2se-tiny", [f"tracking.uri={uri}"])
    with pytest.raises(TrackingUnreachable, match=f"MLflow tracking server {uri} is unreachable"):
        train_recipe(recipe, tmp_path / "run")
    assert not (tmp_path / "run" / "recipe.yaml").exists()
    assert not (tmp_path / "run" / "base-model").exists()


def test_without_mlflow_tracking_is_off_unless_asked_for(tmp_path, monkeypatch):
    from emoverse.tracking import runs

    monkeypatch.setattr(runs, "mlflow_installed", lambda: False)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # as if not installed
    assert isinstance(runs.RecipeTracking.open(load_recipe("m2se-tiny"), tmp_path),
                      runs.NoTracking)
    with pytest.raises(ImportError, match=r"pip install 'emoverse\[tracking\]'"):
        runs.RecipeTracking.open(load_recipe("m2se-tiny", ["tracking.enabled=true"]), tmp_path)


def test_a_rerun_continues_its_runs_and_a_fixed_recipe_starts_new_ones(tmp_path, monkeypatch):
    from emoverse.tracking.runs import RecipeTracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    recipe = load_recipe("m2se-tiny")
    first = RecipeTracking.open(recipe, tmp_path)  # the run directory's own store
    assert first.uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    stage = first.stage_tracking(recipe.stages[0])
    first.finish("FAILED")  # say, refused for its sequence budget
    again = RecipeTracking.open(recipe, tmp_path)
    assert (again.run_id, again.stage_tracking(recipe.stages[0]).run_id) == \
        (first.run_id, stage.run_id)
    again.finish()
    fixed = RecipeTracking.open(load_recipe("m2se-tiny", ["stages.0.max_length=4096"]),
                                tmp_path)  # changed params: MLflow keeps params as first set
    assert fixed.run_id != first.run_id
    fixed.finish()
    client = fixed.experiment.sender.client
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert client.get_experiment_by_name("m2se-tiny").artifact_location == \
        (tmp_path / "mlartifacts").as_uri()


SHORT = ["data.demo_size=100", "stages.0.epochs=1", "stages.0.epoch_size=32",
         "stages.0.log_every=1", "stages.1.epochs=1", "stages.1.epoch_size=32",
         "stages.1.log_every=1"]


@pytest.mark.integration
def test_a_recipe_run_is_one_mlflow_run_with_a_run_per_stage(server, tmp_path):
    import ray

    from emoverse.drivers.training import train_recipe

    recipe = load_recipe("m2se-tiny", [*SHORT, f"tracking.uri={server.uri}",
                                       "tracking.experiment=recipes"])
    run = tmp_path / "run"
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        results = train_recipe(recipe, run)
        client = server.client()
        experiment = client.get_experiment_by_name("recipes").experiment_id
        runs = client.search_runs([experiment])
        parent = next(r for r in runs if PARENT not in r.data.tags)
        stages = {r.info.run_name: r for r in runs if r.data.tags.get(PARENT) == parent.info.run_id}
        assert len(runs) == 3 and sorted(stages) == [S1, S2]
        assert parent.info.run_name == "m2se-tiny (run)" and parent.info.status == "FINISHED"
        assert parent.data.params["seed"] == "0" and parent.data.params["stages"] == f"{S1},{S2}"
        assert parent.data.params["media.num_frames"] == str(recipe.media.num_frames)
        parent_files = {f.path for f in client.list_artifacts(parent.info.run_id)}
        assert {"loss.png", "recipe.yaml", "metrics.json"} <= parent_files
        for name, stage in stages.items():
            lineage = results["stages"][name]["lineage"]
            assert stage.info.status == "FINISHED"
            assert stage.data.tags["emoverse.checkpoint"] == str(run / "checkpoints" / name)
            assert stage.data.params["lr"] == str(recipe.stage(name).lr)
            losses = history(client, stage.info.run_id, "loss")
            assert [v for _, v in losses] == pytest.approx(lineage["losses"])  # rank 0 only
            assert [s for s, _ in history(client, stage.info.run_id, "lr")] == \
                [s for s, _ in losses]
            for task, metrics in results["stages"][name]["metrics"].items():
                for metric, value in flat_metrics(metrics, f"test/{task}").items():
                    assert stage.data.metrics[metric] == pytest.approx(value)
            files = {f.path for f in client.list_artifacts(stage.info.run_id)}
            assert "lineage.json" in files
            figures = {f.path for f in client.list_artifacts(stage.info.run_id, "eval-test")}
            assert {"eval-test/metrics.png", "eval-test/confusion_msa.png"} <= figures

        # a driver restarted while stage 2 was being kept: the stage trains on from its
        # last checkpoint, and logs into the same MLflow runs
        (run / "checkpoints" / S2 / "lineage.json").unlink()
        train_recipe(recipe, run)
    finally:
        ray.shutdown()
    again = client.search_runs([experiment])
    assert sorted(r.info.run_id for r in again) == sorted(r.info.run_id for r in runs)
    assert all(r.info.status == "FINISHED" for r in again)
    assert json.loads((run / "mlflow.json").read_text())[server.uri]["digest"] == recipe.digest()
    assert json.loads((run / "mlflow.json").read_text())[server.uri]["runs"] == {
        "run": parent.info.run_id, **{f"stage:{n}": r.info.run_id for n, r in stages.items()}}


@pytest.mark.integration
def test_a_two_trial_sweep_is_a_parent_run_with_a_run_per_trial(server, tmp_path):
    import ray
    import yaml

    from emoverse.cli import main

    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"stages": {
        S1: {"weights": {"msa": [0.1, 1.0], "fer": [0.1, 1.0], "mer": [0.1, 1.0]}}}}))
    short = [*SHORT, "stages.0.epoch_size=48", "eval.batch_size=64",
             f"tracking.uri={server.uri}", "tracking.experiment=sweeps"]
    sweep = tmp_path / "sweep"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert main(["sweep", "m2se-tiny", *short, "--space", str(space), "--trials", "2",
                     "--sweep-dir", str(sweep)]) == 0
    finally:
        ray.shutdown()
    # Tune's callback sets MLflow's URI, which MLflow exports to the environment: undone
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    import pandas as pd

    table = pd.read_csv(sweep / "trials.csv")
    client = server.client()
    experiment = client.get_experiment_by_name("sweeps").experiment_id
    runs = client.search_runs([experiment])
    parent = next(r for r in runs if PARENT not in r.data.tags)
    trials = [r for r in runs if r.data.tags.get(PARENT) == parent.info.run_id]
    assert len(runs) == 3 and len(trials) == 2 and parent.info.status == "FINISHED"
    assert parent.data.params["trials"] == "2" and parent.data.params["search"] == "optuna"
    assert parent.data.metrics["best_objective"] == pytest.approx(table.objective.max())
    assert {"trials.csv", "objective.png", "best-recipe.yaml"} <= {
        f.path for f in client.list_artifacts(parent.info.run_id)}
    for trial in trials:
        row = table[[trial.data.tags["trial_name"].endswith(t) for t in table.trial]]
        assert len(row) == 1
        for key in (f"{S1}/msa", f"{S1}/fer", f"{S1}/mer"):
            assert float(trial.data.params[key]) == pytest.approx(row[key].item())
        objective = history(client, trial.info.run_id, "objective")
        assert [step for step, _ in objective] == list(range(1, row.stages.item() + 1))
        assert objective[-1][1] == pytest.approx(row.objective.item())
        assert trial.data.tags["stopped_early"] == str(row.status.item() == "stopped early").lower()
