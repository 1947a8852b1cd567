"""The Ray Train worker of one M2SE stage: Ray only for its shard, checkpoint and reports.

The stage itself is `emoverse.train.stage.train`; everything it needs arrives in `config`
(a `StageJob`, from `emoverse.distributed.stage_trainer.fit_stage`). Ray Train hands the
worker the latest checkpoint after a worker failure or a driver re-run, and `train`
carries on from its step, optimiser, schedule and position in the epoch.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from emoverse.media.cache import read_split
from emoverse.train.stage import StageJob, share_of, train


def worker_loop(config: dict) -> None:
    job = StageJob.from_config(config)
    train(job, RayTrainSession(job))


def shard_name(rank: int | None) -> str:
    """The Train dataset a worker reads: "train", which Ray Train splits among the workers,
    or, in a deterministic run, the worker's own "train-<rank>"."""
    return "train" if rank is None else f"train-{rank}"


def numpy_collate(collate):
    """The stage's (Ray-free) collate as the callable class Ray Data asks for: a plain
    function still works but is deprecated, with a warning on every worker and epoch."""
    from ray.data.collate_fn import NumpyBatchCollateFn

    class Collate(NumpyBatchCollateFn):
        def __call__(self, batch):
            return collate(batch)

    return Collate()


class RayTrainSession:
    """A stage's session on a Ray Train worker."""

    def __init__(self, job: StageJob):
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self._shard = ray.train.get_dataset_shard(
            shard_name(self.rank if job.deterministic else None))
        self._job = job

    def epoch_batches(self, epoch: int, batch_size: int, collate):
        return self._shard.iter_torch_batches(
            batch_size=batch_size, collate_fn=numpy_collate(collate), drop_last=True,
            prefetch_batches=4,
            local_shuffle_buffer_size=self._job.shuffle_buffer,
            local_shuffle_seed=self._job.stage.seed * 1000 + epoch)

    def prepare(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    @contextmanager
    def restored(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def eval_rows(self):
        # Read straight from the media cache (one process reads it in a second or two;
        # a Ray Dataset of the split took each worker about 20 s to start and read).
        predict = self._job.predict
        rows = read_split(predict.cache_dir, predict.split, ["sample_id", "task", "prompt"],
                          predict.tasks, hears=predict.hears)
        return share_of(rows, self.rank, self.world_size)

    def report(self, metrics: dict, checkpoint: Path | None = None,
               validate: bool = False) -> None:
        import ray.train

        ray.train.report(metrics, validation=validate, checkpoint=None if checkpoint is None
                         else ray.train.Checkpoint.from_directory(checkpoint))
