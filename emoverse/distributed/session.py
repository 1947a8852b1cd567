"""Connect to Ray: an existing cluster when RAY_ADDRESS is set, else a local one."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from emoverse.console import drop_known_notices


def joins_cluster() -> bool:
    """Whether Ray connects to an existing cluster (RAY_ADDRESS set) rather than starting a
    local instance of its own, which emoverse keeps quiet."""
    return bool(os.environ.get("RAY_ADDRESS"))


def ensure_ray(num_cpus: int | None = None, metrics_export_port: int | None = None) -> None:
    """Connect to RAY_ADDRESS's cluster, or start a quiet local instance (its metrics on
    `metrics_export_port`, or a port Ray picks)."""
    import ray

    if not ray.is_initialized():
        if joins_cluster():
            ray.init()
        else:
            _quiet_local_driver()
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     _metrics_export_port=metrics_export_port,
                     runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_ray",
                                  "env_vars": _quiet_worker_env()})
    import ray.data

    quiet_progress(ray.data.DataContext.get_current())


def quiet_progress(context) -> None:
    """Ray Data's progress bars in `context` (a DataContext): one overall line per dataset,
    or none on a local instance. A dataset copies the context of the process that makes
    it, so datasets made in a Ray worker (a sweep trial) need this too."""
    # Per-operator bars swamp a log file.
    context.enable_operator_progress_bars = False
    if not joins_cluster():
        # Our own lines say how the phases progress (with the time left); Ray Data's log a
        # banner every 10 s in a log file and redraw bars in worker logs (a sweep trial's
        # per-worker datasets drew thousands of lines).
        context.enable_progress_bars = False


def _quiet_worker_env() -> dict[str, str]:
    """What a local instance's workers read at import: Ray Data's logging, and no
    Hugging Face progress bars (a worker's log is no terminal: each loaded model drew one),
    unless the user set the variables."""
    return {RAY_DATA_LOGGING: os.environ.get(RAY_DATA_LOGGING, str(RAY_DATA_LOGGING_FILE)),
            "HF_HUB_DISABLE_PROGRESS_BARS": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "1")}


def _quiet_local_driver() -> None:
    """The driver's part of `quiet_ray`, before Ray and Ray Data configure their loggers."""
    os.environ.setdefault(RAY_DATA_LOGGING, str(RAY_DATA_LOGGING_FILE))
    os.environ.setdefault(PREEMPTION_WATCHER, "0")
    for name, level in QUIET_LOCAL_DRIVER.items():
        logging.getLogger(name).setLevel(level)
    drop_known_notices()
    if "ray.data" in sys.modules:  # configured at import: configure it again
        from ray.data._internal.logging import configure_logging

        configure_logging()


def train_log_level() -> str:
    """Ray Train's console level (`RunConfig(logging_config=...)`): on a local instance,
    warnings only; its info lines (resources requested, worker group started, process
    group, model moved and wrapped, each checkpoint's path) still reach its log files. Ray
    Train configures its loggers itself in every process, so only this setting holds."""
    return "INFO" if joins_cluster() else "WARNING"


def driver_dataset(tables: list):
    """Arrow tables built in the driver as a Ray Dataset, one block each. `from_arrow`
    would start a 1-CPU task per table to read its metadata; those still held the CPUs
    when the dataset's consumer began (on 2 cores Ray Data then warned that the cluster had
    no CPUs). `from_blocks` reads the metadata here."""
    import ray.data

    return ray.data.from_blocks(tables)


def cluster_resources() -> dict[str, float]:
    """The connected cluster's resource totals (CPU, GPU, custom), as Ray counts them."""
    import ray

    return ray.cluster_resources()


# Ray loggers whose messages mean nothing to someone running emoverse on a local instance it
# started itself, with the level they are raised to:
# - Ray Train's placement-group cleaner asks the state API (served by the dashboard, which a
#   local instance runs without) whether the controller lives, every second, and warns each
#   time it cannot tell; that only matters when a controller dies on a cluster outliving it.
# - Ray Train's worker context logs every `ray.train.report` call with its whole
#   `TrainingReport(...)`; our workers log progress lines of their own. Its logger is named by
#   the module's file path (`ray/train/v2/_internal/execution/context.py`).
QUIET_ON_LOCAL_RAY = {
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    "{ray}/train/v2/_internal/execution/context.py": logging.WARNING,
}
# Python warnings Ray raises inside its own code, which no setting of ours can avoid: Ray
# Train's dataset manager sets an option Ray Data has deprecated.
QUIET_WARNINGS = (r"`ExecutionOptions.exclude_resources` is deprecated",)
# On the driver, Ray's notice that token authentication is on: a local instance that
# emoverse starts listens on loopback only.
QUIET_LOCAL_DRIVER = {"ray._private.authentication.authentication_token_setup": logging.ERROR}
# Ray Data's logging on a local instance: everything still goes to the session's
# ray-data.log, only warnings to the console (Ray Data reads this at import, in every
# process, from the variable Ray Data documents for it).
RAY_DATA_LOGGING = "RAY_DATA_LOGGING_CONFIG"
# Ray Train's preemption watcher, an actor per stage that polls for node drains: a local
# instance is one node, whose drain ends the run anyway, and starting the actor printed a
# core-worker notice per stage. Ray Train passes this variable from the driver on.
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
RAY_DATA_LOGGING_FILE = Path(__file__).with_name("ray_data_logging.yaml")


def quiet_ray() -> None:
    """Ray's `worker_process_setup_hook` for the local instance `ensure_ray` starts: raises
    the level of the loggers in `QUIET_ON_LOCAL_RAY` and drops the console's known notices
    in every Ray worker process."""
    import ray

    root = os.path.dirname(ray.__file__)
    for name, level in QUIET_ON_LOCAL_RAY.items():
        logging.getLogger(name.format(ray=root)).setLevel(level)
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    drop_known_notices()
