"""A sweep in MLflow: a parent run, its trials nested under it. No Ray.

The parent holds the sweep's settings and search space as params and, at the end, the
best objective and the sweep's table, figure and best recipe. The trials' runs are Ray
Tune's own MLflow integration (`emoverse.distributed.tuning.trial_runs`), nested under
the parent by MLflow's parent tag. The parent's id is kept in the sweep directory, so a
resumed sweep continues it.
"""

from __future__ import annotations

from pathlib import Path

from emoverse.console import logger
from emoverse.recipe import Recipe
from emoverse.sweep_space import SweepSpace
from emoverse.tracking.runs import Experiment, flat_params, open_experiment

log = logger(__name__)


class SweepTracking:
    """A sweep's parent run; `trials` says where Tune's callback nests the trials."""

    def __init__(self, experiment: Experiment, recipe: Recipe, space: SweepSpace,
                 settings: dict, sweep_path: Path):
        self.experiment, self.sweep_path = experiment, sweep_path
        self.uri = experiment.uri
        self.run_id = experiment.run("sweep", f"sweep {recipe.name} ({sweep_path.name})", tags={
            "emoverse.sweep_dir": str(sweep_path), "emoverse.recipe_digest": recipe.digest()})
        experiment.params(self.run_id, {
            **flat_params(settings), **flat_params(space.model_dump(mode="json"), "space."),
            "recipe": recipe.name, "stages": ",".join(s.name for s in recipe.stages)})
        log.info("the sweep is MLflow run %s; each trial a run nested under it", self.run_id)

    @classmethod
    def open(cls, recipe: Recipe, space: SweepSpace, settings: dict, sweep_path: str | Path):
        """The sweep's parent run, its server checked to answer before any work; None when
        tracking is off (or left to MLflow being installed, and it is not)."""
        experiment = open_experiment(recipe, Path(sweep_path).resolve())
        return cls(experiment, recipe, space, settings, Path(sweep_path).resolve()) \
            if experiment else None

    @property
    def trials(self) -> dict:
        """What Tune's MLflow callback needs to nest the trials under this run."""
        return {"uri": self.uri, "experiment": self.experiment.name, "parent": self.run_id}

    def finish(self, best: dict | None, files: list[Path], status: str = "FINISHED") -> None:
        """End the parent run (queued calls: an outage is the sender's to log)."""
        if best:
            self.experiment.metrics(self.run_id, {"best_objective": float(best["objective"])})
            self.experiment.tag(self.run_id, "emoverse.best_trial", str(best["trial"]))
        self.experiment.artifacts(self.run_id, files)
        self.experiment.end(self.run_id, status)
        self.experiment.sender.close()
