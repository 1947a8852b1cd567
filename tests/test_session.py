"""The console: the worker processes of a local Ray instance keep Ray's known noise down."""

import logging

import pytest

from emoverse.distributed.session import QUIET_ON_LOCAL_RAY


@pytest.mark.integration
def test_local_ray_workers_run_the_quiet_hook(monkeypatch):
    import ray

    from emoverse.distributed.session import ensure_ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
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

    ensure_ray(num_cpus=1)
    try:
        assert ray.get(levels.remote()) == QUIET_ON_LOCAL_RAY
    finally:
        ray.shutdown()
