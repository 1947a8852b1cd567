"""A recipe run in MLflow: one run, a nested run per stage. No Ray.

The run's params are the resolved recipe (its stages apart), each stage run's params its
stage; stage runs get the step metrics (from the training process of rank 0, `StepLog`),
the evaluation's metrics and figures, the lineage and the checkpoint's path; the run gets
the loss curves, the recipe and the final metrics.json. The runs' ids are kept in the run
directory (`mlflow.json`, per tracking URI), so a re-run of the directory continues the
same MLflow runs: a resumed stage logs into the run it started.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Iterable

from emoverse.console import logger
from emoverse.recipe import Recipe, StageConfig, TrackingConfig
from emoverse.tracking.sender import Sender, StepTracking, TrackingUnreachable

log = logger(__name__)
RECORD = "mlflow.json"  # the run directory's MLflow run ids, by tracking URI
LOCAL_STORE = "mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"
PARENT = "mlflow.parentRunId"  # MLflow's tag that nests a run under another
MAX_PARAM_VALUE = 6000  # MLflow's limit on a param's value
PARAMS_PER_CALL = 100  # and on params per log_batch


def mlflow_installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def tracking_uri(config: TrackingConfig, run_path: Path) -> str:
    """The recipe's URI, else $MLFLOW_TRACKING_URI, else the run directory's local store."""
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{Path(run_path).resolve() / LOCAL_STORE}"


def local_ui_command(run_path: Path) -> str:
    """The command that shows a run's local store in MLflow's UI."""
    return f"mlflow ui --backend-store-uri sqlite:///{Path(run_path).resolve() / LOCAL_STORE}"


def tracked_at(run_path: Path) -> list[str]:
    """Lines saying where a run directory's MLflow runs are, and how to look at them."""
    record = Path(run_path) / RECORD
    uris = json.loads(record.read_text()) if record.is_file() else {}
    local = f"sqlite:///{Path(run_path).resolve() / LOCAL_STORE}"
    return [line for uri in uris for line in (
        ["  look at its stages, metrics and figures in MLflow (then http://127.0.0.1:5000):",
         f"    {local_ui_command(run_path)}"] if uri == local else
        [f"  its stages, metrics and figures are tracked in MLflow at {uri}"])]


def flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys; a mixture as `mixture.<task>` (or
    `mixture.<task>.<source>`) = weight; other lists as their JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key == "mixture" and isinstance(value, list):
            for entry in value:
                source = "" if entry.get("source", "*") == "*" else f".{entry['source']}"
                out[f"{name}.{entry['task']}{source}"] = str(entry["weight"])
        elif isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            out[name] = text[:MAX_PARAM_VALUE]
    return out


def flat_metrics(data: dict, prefix: str) -> dict[str, float]:
    """The numbers in nested metrics, under `prefix/<key>/<key>`."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            out.update(flat_metrics(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def open_experiment(recipe: Recipe, path: Path) -> "Experiment | None":
    """The recipe's MLflow experiment for a run or sweep directory `path`, its server
    checked to answer (TrackingUnreachable, naming it, if not); None when tracking is off,
    or left to MLflow being installed and it is not."""
    config = recipe.tracking
    if config.enabled is False or (config.enabled is None and not mlflow_installed()):
        if config.enabled is None and os.environ.get("MLFLOW_TRACKING_URI"):
            log.warning("MLFLOW_TRACKING_URI is set but MLflow is not installed: this run is "
                        "not tracked (pip install 'emoverse[tracking]')")
        return None
    uri = tracking_uri(config, path)
    local = config.uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
    if local:
        path.mkdir(parents=True, exist_ok=True)
    sender = Sender(uri, config.patience_s)
    sender.check()
    name = config.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe.name
    experiment = Experiment(sender, name, path / RECORD, recipe.digest(),
                            (path / LOCAL_ARTIFACTS).as_uri() if local else None)
    log.info("tracking in MLflow at %s, experiment %r%s", uri, name,
             f" (see it: {local_ui_command(path)})" if local else "")
    return experiment


class Experiment:
    """MLflow runs of one experiment through a `Sender`, and their ids kept in a file."""

    def __init__(self, sender: Sender, name: str, record: Path, digest: str,
                 artifact_location: str | None = None):
        self.sender, self.uri, self.record, self.name = sender, sender.uri, record, name
        self.digest = digest  # the recipe's: runs recorded for another recipe are not reused
        found = sender.call("get_experiment_by_name", name)
        self.experiment_id = found.experiment_id if found else sender.call(
            "create_experiment", name, artifact_location=artifact_location)
        self.ids = self._recorded()

    def run(self, key: str, name: str, parent: str | None = None,
            tags: dict | None = None) -> str:
        """The id of the run recorded under `key`, marked running again, or a new one."""
        if key in self.ids:
            try:
                self.sender.call("update_run", self.ids[key], status="RUNNING")
                return self.ids[key]
            except TrackingUnreachable:
                raise
            except Exception as exc:  # deleted in MLflow since: start a new one
                log.warning("MLflow run %s (%s) cannot be continued (%s); starting a new one",
                            self.ids[key], name, str(exc)[:200])
        tags = {**(tags or {}), **({PARENT: parent} if parent else {})}
        run = self.sender.call("create_run", self.experiment_id, run_name=name, tags=tags)
        self.ids[key] = run.info.run_id
        self._write()
        return self.ids[key]

    def params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), PARAMS_PER_CALL):
            self.sender.submit("log_batch", run_id, params=items[start:start + PARAMS_PER_CALL])

    def metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.sender.submit("log_batch", run_id, metrics=[
            Metric(k, v, now, step) for k, v in metrics.items()])

    def tag(self, run_id: str, key: str, value: str) -> None:
        self.sender.submit("set_tag", run_id, key, value)

    def artifacts(self, run_id: str, paths: Iterable[Path], artifact_path: str | None = None):
        for path in paths:
            if path.is_file():
                self.sender.submit("log_artifact", run_id, str(path), artifact_path)

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.sender.submit("set_terminated", run_id, status)

    def _recorded(self) -> dict[str, str]:
        if not self.record.is_file():
            return {}
        recorded = json.loads(self.record.read_text()).get(self.uri, {})
        # a recipe refused before its run began (budget, faces) and then fixed: new runs
        return recorded.get("runs", {}) if recorded.get("digest") == self.digest else {}

    def _write(self) -> None:
        data = json.loads(self.record.read_text()) if self.record.is_file() else {}
        data[self.uri] = {"experiment_id": self.experiment_id, "digest": self.digest,
                          "runs": self.ids}
        self.record.parent.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(data, indent=2))


class NoTracking:
    """A run that is not tracked."""

    uri = None

    def stage_tracking(self, stage: StageConfig) -> None:
        return None

    def stage_trained(self, stage: StageConfig, checkpoint: Path, lineage: dict) -> None:
        pass

    def stage_evaluated(self, stage: StageConfig, report: Path, metrics: dict,
                        split: str) -> None:
        pass

    def stage_done(self, stage: StageConfig) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


class RecipeTracking:
    """A recipe run's MLflow run and its stages' nested runs."""

    def __init__(self, experiment: Experiment, recipe: Recipe, run_path: Path):
        self.experiment, self.recipe, self.run_path = experiment, recipe, run_path
        self.uri = experiment.uri
        self.run_id = experiment.run("run", f"{recipe.name} ({run_path.name})", tags={
            "emoverse.run_dir": str(run_path), "emoverse.recipe_digest": recipe.digest()})
        settings = json.loads(recipe.model_dump_json(exclude={"stages", "tracking"}))
        experiment.params(self.run_id, {**flat_params(settings),
                                        "stages": ",".join(s.name for s in recipe.stages)})
        self._stages: dict[str, str] = {}
        log.info("this run is MLflow run %s; each stage a run nested under it", self.run_id)

    @classmethod
    def open(cls, recipe: Recipe, run_path: str | Path):
        """The run's tracking, checked to answer before any work; NoTracking when
        tracking is off (or left to MLflow being installed, and it is not)."""
        experiment = open_experiment(recipe, Path(run_path).resolve())
        return cls(experiment, recipe, Path(run_path).resolve()) if experiment else NoTracking()

    def stage_tracking(self, stage: StageConfig) -> StepTracking | None:
        """The stage's nested run (created, or continued after an interruption), for the
        step metrics of its process of rank 0; None if the server does not answer."""
        run_id = self._quiet(self._stage_run, stage)
        if run_id is None:
            return None
        return StepTracking(self.uri, run_id, self.recipe.tracking.patience_s)

    def stage_trained(self, stage: StageConfig, checkpoint: Path, lineage: dict) -> None:
        """A stage's checkpoint is kept: its path, lineage and validation in its run."""
        run_id = self._quiet(self._stage_run, stage)
        if run_id is None:
            return
        self.experiment.tag(run_id, "emoverse.checkpoint", str(checkpoint))
        self.experiment.artifacts(run_id, [checkpoint / "lineage.json"])
        if lineage.get("validation"):
            self.experiment.metrics(run_id, flat_metrics(lineage["validation"], "validation"),
                                    step=lineage.get("step", 0))
        self.experiment.artifacts(self.run_id, [self.run_path / "loss.png"])

    def stage_evaluated(self, stage: StageConfig, report: Path, metrics: dict,
                        split: str) -> None:
        """A stage's evaluation: its metrics and the report's figures and metrics.json."""
        run_id = self._quiet(self._stage_run, stage)
        if run_id is None:
            return
        self.experiment.metrics(run_id, flat_metrics(metrics, split))
        self.experiment.artifacts(run_id, sorted(report.glob("*.png")) +
                                  [report / "metrics.json"], artifact_path=f"eval-{split}")

    def stage_done(self, stage: StageConfig) -> None:
        run_id = self._stages.pop(stage.name, None)
        if run_id:
            self.experiment.end(run_id)

    def finish(self, status: str = "FINISHED") -> None:
        """End the run (and any stage run still open), sending what is queued."""
        for run_id in self._stages.values():
            self.experiment.end(run_id, status)
        self.experiment.artifacts(self.run_id, [self.run_path / "recipe.yaml",
                                                self.run_path / "metrics.json"])
        self.experiment.end(self.run_id, status)
        self.experiment.sender.close()

    def _stage_run(self, stage: StageConfig) -> str:
        if stage.name not in self._stages:
            run_id = self.experiment.run(f"stage:{stage.name}", stage.name, parent=self.run_id,
                                         tags={"emoverse.stage": stage.name})
            self.experiment.params(run_id, flat_params(stage.model_dump(mode="json")))
            self._stages[stage.name] = run_id
        return self._stages[stage.name]

    def _quiet(self, fn, *args):
        """`fn(*args)`, or None when MLflow fails it: tracking never stops a run midway."""
        try:
            return fn(*args)
        except TrackingUnreachable:
            return None  # the sender has said so
        except Exception as exc:
            log.warning("MLflow at %s: %s; the run goes on, its directory keeps the record",
                        self.uri, str(exc)[:300])
            return None
