"""Mixture sweeps on Ray Tune: the search, the scheduler and the Tune function of a trial.

A trial's work is the driver's (`emoverse.drivers.sweep.run_trial`: the recipe with the
sampled weights, its stages through the stage chain); the Tune function here only hands it
the sampled parameters and Tune's `report`, so ASHA sees the validation `objective` after
each stage and can stop a trial after stage 1. TuneReportCallback is not used: it forwards
every per-step progress report of the workers as a Tune result (without the objective,
which Tune then refuses), while the objective comes from the validation of the stage's
final checkpoint.

The search is Optuna's TPE (`search="optuna"`) or Tune's random generator; both evaluate
the given points first (the recipe's own values, then the space's `points`) and are
seeded, so a sweep's sequence of trials is reproducible.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from emoverse.console import logger
from emoverse.recipe import Recipe
from emoverse.sweep_space import SweepSpace, param_name

log = logger(__name__)
URI_VARIABLE = "MLFLOW_TRACKING_URI"
Trial = Callable[[dict, dict, Callable[[dict], None]], None]  # (params, fixed, report)


def tune_key(param: str) -> str:
    """A parameter's name in Tune: `/` is Tune's (and Optuna's) nesting separator."""
    return param.replace("/", ":")


def search_space(space: SweepSpace) -> dict:
    """Ray Tune's distributions for the space's parameters."""
    from ray import tune

    params = {}
    for stage, s in space.stages.items():
        for key, (low, high) in s.weights.items():
            params[param_name(stage, key)] = tune.uniform(low, high)
        if s.lr:
            params[param_name(stage, "lr")] = tune.loguniform(*s.lr)
        if s.lora_r:
            params[param_name(stage, "lora_r")] = tune.choice(s.lora_r)
    return {tune_key(k): v for k, v in params.items()}


def tune_function(config: dict, fixed: dict, trial: Trial) -> None:
    """Tune function: `trial` on this trial's sampled parameters, reporting to Tune.

    `config` holds only the sampled parameters; what every trial shares (`fixed`: the
    recipe, space, data) comes through `tune.with_parameters`, so Tune's trial table,
    progress lines and saved configs stay the size of the search space."""
    from ray import tune

    trial(trial_params(config), fixed, tune.report)


def trial_params(config: dict) -> dict:
    """A trial's sampled parameters under their `{stage}/{key}` names."""
    return {k.replace(":", "/"): v for k, v in config.items()}


def searcher(search: str, points: list[dict], seed: int, concurrent: int):
    """The search algorithm: Optuna's TPE or random, the given points first."""
    if search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(points_to_evaluate=_tune_points(points), seed=seed)
    if search == "random":
        from ray.tune.search import BasicVariantGenerator

        # Tune applies max_concurrent_trials to Searchers only, not to this generator.
        return BasicVariantGenerator(points_to_evaluate=_tune_points(points), random_state=seed,
                                     max_concurrent=concurrent)
    raise ValueError(f"unknown search {search!r} (optuna or random)")


def tune_sweep(trial: Trial, recipe: Recipe, space: SweepSpace, trials: int, sweep_dir: Path,
               fixed: dict, concurrent: int, search: str = "optuna",
               points: list[dict] | None = None, seed: int = 0, early_stopping: bool = True,
               tracking: dict | None = None):
    """Run (or resume) the sweep's trials on Ray Tune with ASHA; returns the ResultGrid.
    `tracking`: {uri, experiment, parent}: each trial an MLflow run under `parent`."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    shared = json.loads(json.dumps(fixed, default=str))
    trainable = tune.with_resources(tune.with_parameters(tune_function, fixed=shared,
                                                         trial=trial),
                                    {"cpu": 0.01})  # its stages reserve their own
    storage = sweep_dir / "tune"
    if tune.Tuner.can_restore(str(storage / "sweep")):  # an interrupted sweep resumes
        log.info("sweep: resuming the Tune experiment under %s", storage / "sweep")
        tuner = tune.Tuner.restore(str(storage / "sweep"), trainable=trainable,
                                   resume_errored=True)  # with the callbacks it began with
        return tuner.fit()
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=len(recipe.stages),
                              grace_period=1, reduction_factor=2) if early_stopping else None
    tuner = tune.Tuner(
        trainable, param_space=search_space(space),
        tune_config=tune.TuneConfig(metric="objective", mode="max", num_samples=trials,
                                    search_alg=searcher(search, points or [], seed, concurrent),
                                    scheduler=scheduler, max_concurrent_trials=concurrent,
                                    trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name="sweep", storage_path=str(storage.resolve()),
            callbacks=[trial_runs(**tracking, stages=len(recipe.stages))] if tracking else None))
    return tuner.fit()


def _trial_dirname(trial) -> str:
    # Tune's default name lists every sampled value, with long float reprs.
    return f"trial_{trial.trial_id}"


def _tune_points(points: list[dict]) -> list[dict] | None:
    return [{tune_key(k): v for k, v in p.items()} for p in points] or None



def trial_runs(uri: str, experiment: str, parent: str, stages: int):
    """Ray Tune's MLflow callback, each trial's run nested under the sweep's (`parent`):
    the sampled parameters under their `{stage}/{key}` names, each stage's reported
    objective and metrics at step = stage, and a `stopped_early` tag at the end. An
    unreachable server is logged and the sweep goes on (the sweep directory keeps the
    record)."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    class TrialRuns(MLflowLoggerCallback):
        def setup(self, *args, **kwargs):
            # MLflow's set_tracking_uri, which this calls, also exports MLFLOW_TRACKING_URI
            # to the process's environment: keep the caller's (later runs in this process,
            # and its subprocesses, would track to the sweep's server)
            before = os.environ.get(URI_VARIABLE)
            try:
                _guarded(super().setup, *args, **kwargs)
            finally:
                if before is None:
                    os.environ.pop(URI_VARIABLE, None)
                else:
                    os.environ[URI_VARIABLE] = before

        def log_trial_start(self, trial):
            _guarded(self._start, trial)

        def log_trial_result(self, iteration, trial, result):
            _guarded(super().log_trial_result, iteration, trial, result)

        def log_trial_end(self, trial, failed=False):
            _guarded(self._end, trial, failed)

        def _start(self, trial):
            if trial not in self._trial_runs:
                run = self.mlflow_util.start_run(tags={**self.tags, "trial_name": str(trial)},
                                                 run_name=str(trial))
                self._trial_runs[trial] = run.info.run_id
                self.mlflow_util.log_params(run_id=run.info.run_id,
                                            params_to_log=trial_params(trial.config))

        def _end(self, trial, failed):
            if trial in self._trial_runs:
                reached = (trial.last_result or {}).get("stage", 0)
                self.mlflow_util._get_client().set_tag(
                    self._trial_runs[trial], "stopped_early",
                    str(not failed and reached < stages).lower())
                super().log_trial_end(trial, failed)

    return TrialRuns(uri, experiment_name=experiment, tags={"mlflow.parentRunId": parent})


def _guarded(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as exc:  # a tracking outage must not fail the sweep
        log.warning("MLflow: %s failed (%s); the sweep goes on, its directory keeps the record",
                    getattr(call, "__name__", "a call"), str(exc)[:300])
