"""A sweep in MLflow: a parent run, its trials nested under it. No Ray.

The parent holds the sweep's settings and search space as params and, at the end, the
best objective and the sweep's table, figure and best recipe. The trials' runs are Ray
Tune's own MLflow integration (`emoverse.distributed.tuning.trial_runs`), nested under
the parent by MLflow's parent tag. The parent's id is kept in the sweep directory, so a
resumed sweep continues it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from emoverse.console import logger
from emoverse.recipe import Recipe
from emoverse.sweep_space import SweepSpace
from emoverse.tracking.runs import (LOCAL_ARTIFACTS, RECORD, Experiment, flat_params,
                                    local_ui_command, mlflow_installed, tracking_uri)
from emoverse.tracking.sender import Sender, TrackingUnreachable

log = logger(__name__)


class SweepTracking:
    """A sweep's parent run; `trials` says where Tune's callback nests the trials."""

    def __init__(self, experiment: Experiment, name: str, recipe: Recipe, space: SweepSpace,
                 settings: dict, sweep_path: Path):
        self.experiment, self.name, self.sweep_path = experiment, name, sweep_path
        self.uri = experiment.uri
        self.run_id = experiment.run("sweep", f"sweep {recipe.name} ({sweep_path.name})", tags={
            "emoverse.sweep_dir": str(sweep_path), "emoverse.recipe_digest": recipe.digest()})
        experiment.params(self.run_id, {
            **flat_params(settings), **flat_params(space.model_dump(mode="json"), "space."),
            "recipe": recipe.name, "stages": ",".join(s.name for s in recipe.stages)})

    @classmethod
    def open(cls, recipe: Recipe, space: SweepSpace, settings: dict, sweep_path: str | Path):
        """The sweep's parent run, checked to answer before any work; None when tracking
        is off (or left to MLflow being installed, and it is not)."""
        config, sweep_path = recipe.tracking, Path(sweep_path).resolve()
        if config.enabled is False or (config.enabled is None and not mlflow_installed()):
            return None
        uri = tracking_uri(config, sweep_path)
        local = config.uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
        sweep_path.mkdir(parents=True, exist_ok=True)
        sender = Sender(uri, config.patience_s)
        sender.check()
        name = config.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or recipe.name
        location = (sweep_path / LOCAL_ARTIFACTS).as_uri() if local else None
        tracking = cls(Experiment(sender, name, sweep_path / RECORD, location), name, recipe,
                       space, settings, sweep_path)
        log.info("tracking the sweep in MLflow at %s, experiment %r, run %s%s", uri, name,
                 tracking.run_id, f" (see it: {local_ui_command(sweep_path)})" if local else "")
        return tracking

    @property
    def trials(self) -> dict:
        """What Tune's MLflow callback needs to nest the trials under this run."""
        return {"uri": self.uri, "experiment": self.name, "parent": self.run_id}

    def finish(self, best: dict | None, files: list[Path], status: str = "FINISHED") -> None:
        try:
            if best:
                self.experiment.metrics(self.run_id, {"best_objective": float(best["objective"])})
                self.experiment.tag(self.run_id, "emoverse.best_trial", str(best["trial"]))
            self.experiment.artifacts(self.run_id, files)
            self.experiment.end(self.run_id, status)
        except TrackingUnreachable:
            pass
        self.experiment.sender.close()


def settings_json(**settings) -> dict:
    """Sweep settings as plain JSON values (params)."""
    return json.loads(json.dumps(settings, default=str))
