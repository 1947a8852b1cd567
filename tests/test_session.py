"""The console: the worker processes of a local Ray instance keep Ray's known noise down."""

import logging
import os

import pytest

from emoverse.distributed.session import PREEMPTION_WATCHER, QUIET_ON_LOCAL_RAY


@pytest.mark.integration
def test_local_ray_workers_run_the_quiet_hook(monkeypatch):
    import ray

    from emoverse.distributed.session import ensure_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(PREEMPTION_WATCHER, raising=False)
    if ray.is_initialized():
        ray.shutdown()

    @ray.remote(num_cpus=0)
    def levels() -> dict:
        import os

        from ray.train.v2._internal.execution import context

        root = os.path.dirname(ray.__file__)
        assert context.logger.name == f"{root}/train/v2/_internal/execution/context.py"
        return {name: logging.getLogger(name.format(ray=root)).level
                for name in QUIET_ON_LOCAL_RAY}

    @ray.remote(num_cpus=0)
    def console() -> dict:
        import os

        import ray.data  # noqa: F401  (Ray Data configures its loggers on import)

        deepspeed = logging.getLogger("DeepSpeed")
        record = deepspeed.makeRecord("DeepSpeed", logging.WARNING, __file__, 1,
                                      "Setting accelerator to CPU. If you have GPU ...", (), None)
        return {"ray_data_console": [h.level for h in logging.getLogger("ray.data").handlers
                                     if not hasattr(h, "_filename")],
                "deepspeed_cpu_notice": deepspeed.filter(record),
                "hf_bars": os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")}

    ensure_ray(num_cpus=1)
    try:
        assert ray.get(levels.remote()) == QUIET_ON_LOCAL_RAY
        assert ray.get(console.remote()) == {"ray_data_console": [logging.WARNING],
                                             "deepspeed_cpu_notice": False, "hf_bars": "1"}
        assert not ray.data.DataContext.get_current().enable_progress_bars
        # Ray Train passes this on to its controller: no preemption watcher actor per stage
        assert os.environ[PREEMPTION_WATCHER] == "0"
    finally:
        ray.shutdown()
