"""What makes a run repeatable, and what records it: torch's deterministic mode, a seed per
batch, the library versions a stage's lineage keeps, and a digest of a run's metrics that
two machines can compare. No Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib import metadata

import numpy as np

# Whose versions a stage's lineage records: each can change the numbers a seed gives.
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "deepspeed", "ray", "numpy",
             "pyarrow", "av", "opencv-python-headless")


def use_deterministic_torch() -> None:
    """torch's deterministic algorithms where they exist (a warning where an op has none),
    and no autotuning that picks kernels by timing."""
    import torch

    # cuBLAS needs a fixed workspace for reproducible matmuls; it reads this when a handle
    # is made, at the first matmul, so setting it here is early enough.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def batch_seed(seed: int, rank: int, epoch: int, micro_batch: int) -> int:
    """The torch seed of one micro-batch (its dropout masks): a function of its place in
    the run, so a resumed run draws what the uninterrupted one drew."""
    return int(np.random.SeedSequence([seed, rank, epoch, micro_batch]).generate_state(1)[0])


def library_versions() -> dict[str, str | None]:
    """Python's and the installed libraries' versions (None: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def metrics_digest(metrics: dict) -> str:
    """A short hash of `metrics` (nested dicts of numbers), exact to the last bit: equal
    digests mean equal metrics."""
    text = json.dumps(metrics, sort_keys=True, default=float)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
