"""Connect to Ray: an existing cluster when RAY_ADDRESS is set, else a local one."""

from __future__ import annotations

import os


def ensure_ray(num_cpus: int | None = None) -> None:
    import ray
    import ray.data

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": "emoverse.console.quiet_ray"})
    # One overall progress line per dataset; per-operator bars swamp a log file.
    ctx = ray.data.DataContext.get_current()
    ctx.enable_operator_progress_bars = False


def cluster_resources() -> dict[str, float]:
    """The connected cluster's resource totals (CPU, GPU, custom), as Ray counts them."""
    import ray

    return ray.cluster_resources()
