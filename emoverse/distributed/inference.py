"""Batch inference on Ray Data: media cache rows -> model actors -> answer texts.

Every row of the chosen split is generated exactly once (map_batches over the whole
dataset; nothing is sharded or dropped). Rows are sorted by task first, so a batch holds
one task's rows and decodes only as long as that task's answers run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from emoverse.media.cache import clip_files
from emoverse.model.checkpoint import hears
from emoverse.model.generation import AnswerGenerator, Budget
from emoverse.model.inputs import AUDIO_COLUMNS

COLUMNS = ["sample_id", "task", "split", "prompt", "frames", "ok"]


class GeneratorActor:
    def __init__(self, model_path: str, max_new_tokens: Budget, torch_threads: int = 1):
        self.generator = AnswerGenerator(model_path, max_new_tokens, torch_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = self.generator.generate(batch)
        return {"sample_id": batch["sample_id"], "task": batch["task"],
                "prediction": np.array(texts, dtype=object)}


def _in_split(batch: dict[str, np.ndarray], split: str,
              tasks: list[str] | None) -> dict[str, np.ndarray]:
    keep = (batch["split"] == split) & batch["ok"].astype(bool)
    if tasks is not None:
        keep &= np.isin(batch["task"], tasks)
    return {k: v[keep] for k, v in batch.items()}


def split_rows(cache_dir: str | Path, split: str, tasks: Sequence[str] | None = None,
               audio: bool = False):
    """A Ray Dataset of the usable clips of `split` (of `tasks` only, when given), with
    their audio when `audio`."""
    import ray.data

    columns = [*COLUMNS, *(AUDIO_COLUMNS if audio else ())]
    ds = ray.data.read_parquet(clip_files(cache_dir)).select_columns(columns)
    return ds.map_batches(_in_split, batch_format="numpy",
                          fn_kwargs={"split": split, "tasks": list(tasks) if tasks else None})


def predict(cache_dir: str | Path, model_path: str | Path, split: str, max_new_tokens: Budget,
            batch_size: int = 32, num_actors: int = 1, tasks: Sequence[str] | None = None):
    """A DataFrame of (sample_id, task, prediction) for every usable clip of `split`.
    `max_new_tokens`: one budget for every row, or one per task."""
    import ray.data

    ds = split_rows(cache_dir, split, tasks, hears(model_path)).sort(["task", "sample_id"])
    ds = ds.map_batches(GeneratorActor, batch_size=batch_size, batch_format="numpy",
                        fn_constructor_kwargs={"model_path": str(model_path),
                                               "max_new_tokens": max_new_tokens},
                        compute=ray.data.ActorPoolStrategy(size=num_actors),
                        num_cpus=0.5)  # single-threaded; leaves CPU for the read tasks
    return ds.to_pandas()
