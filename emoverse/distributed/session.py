"""Connect to Ray: an existing cluster when RAY_ADDRESS is set, else a local one."""

from __future__ import annotations

import logging
import os


def ensure_ray(num_cpus: int | None = None) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": f"{__name__}.quiet_ray"})
    # One overall progress line per dataset; per-operator bars swamp a log file.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_operator_progress_bars = False


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


def quiet_ray() -> None:
    """Ray's `worker_process_setup_hook` for the local instance `ensure_ray` starts: raises
    the level of the loggers in `QUIET_ON_LOCAL_RAY` in every Ray worker process."""
    import ray

    root = os.path.dirname(ray.__file__)
    for name, level in QUIET_ON_LOCAL_RAY.items():
        logging.getLogger(name.format(ray=root)).setLevel(level)
