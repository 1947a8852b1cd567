"""The Ray Train worker of one M2SE stage: Ray only for its shard, checkpoint and reports.

Everything it needs arrives in `config` (from `emoverse.distributed.stage_trainer.fit_stage`).
On start it restores the latest checkpoint Ray Train hands it (after a worker failure,
or when the driver re-runs a stage in the same run directory), so the step count, the
optimiser, the schedule and the position in the epoch carry on instead of restarting.
"""

from __future__ import annotations

import json
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Ray Train routes a worker's print() both to stdout and to the root logger, so each
# line reached the console twice; a logger record is shown once.
log = logging.getLogger(__name__)
LOOP_STATE = "loop_state.json"
ENGINE_DIR = "engine"


def worker_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from emoverse.model.checkpoint import (apply_trainable, finish_checkpoint, load_model,
                                           load_processor, trainable_summary, weights_dir)
    from emoverse.recipe import StageConfig
    from emoverse.model.inputs import Collator
    from emoverse.train.engine import make_engine
    from emoverse.train.loop import LoopState, train_epochs

    torch.set_num_threads(config["torch_threads"])
    stage = StageConfig(**config["stage"])
    torch.manual_seed(stage.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    processor = load_processor(config["init_from"])
    shard = ray.train.get_dataset_shard("train")
    collate = Collator(processor, stage.max_length)

    def shard_batches(epoch: int):
        return shard.iter_torch_batches(
            batch_size=stage.batch_size // world, collate_fn=collate, drop_last=True,
            prefetch_batches=4, local_shuffle_buffer_size=config["shuffle_buffer"],
            local_shuffle_seed=stage.seed * 1000 + epoch)

    resumed = ray.train.get_checkpoint()
    state = LoopState()
    if resumed:
        with resumed.as_directory() as directory:
            state = LoopState.from_dict(json.loads((Path(directory) / LOOP_STATE).read_text()))
    # Start the data pipeline now: its start-up overlaps the model's loading.
    feed = EpochFeed(shard_batches, first_epoch=state.epoch)

    model = apply_trainable(load_model(config["init_from"]), stage.trainable)
    if rank == 0:
        log.info("[%s] %s", stage.name, trainable_summary(model))
    if stage.strategy.kind == "ddp":
        model = ray.train.torch.prepare_model(model)
    else:  # DeepSpeed wraps and distributes the model itself
        model = model.to(ray.train.torch.get_device())
    total = config["total_steps"]
    engine = make_engine(model, stage, total)
    if resumed:
        with resumed.as_directory() as directory:
            engine.load(Path(directory) / ENGINE_DIR)
        if rank == 0:
            log.info("[%s] resumed from a checkpoint at step %d/%d (epoch %d, %d steps in)",
                     stage.name, state.step, total, state.epoch + 1, state.epoch_step)
    resumed_at = state.step if resumed else None
    device = getattr(engine, "device", None) or ray.train.torch.get_device()

    def epoch_batches(epoch: int):
        for batch in feed(epoch):
            yield {k: v.to(device) for k, v in batch.items()}

    def progress(state: LoopState, metrics: dict) -> dict:
        return {"step": state.step, "epoch": state.epoch, "loss": metrics["loss"],
                "samples_per_second": state.samples_per_second * world,
                "data_wait_fraction": state.data_wait_fraction}

    def on_log(state: LoopState, metrics: dict) -> None:
        report = progress(state, metrics)
        if rank == 0:
            log.info("[%s] step %d/%d loss %.4f lr %.2e %.0f samples/s data wait %.0f%%",
                     stage.name, state.step, total, metrics["loss"], metrics["lr"],
                     report["samples_per_second"], 100 * state.data_wait_fraction)
        ray.train.report(report)  # every worker reports at the same steps

    def on_checkpoint(state: LoopState, metrics: dict, final: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            engine.save(Path(tmp) / ENGINE_DIR, is_main=rank == 0)  # collective for DeepSpeed
            if final and engine.save_pretrained(Path(tmp) / weights_dir(engine.module),
                                                is_main=rank == 0):
                lineage = {**config["lineage"], "step": state.step, "loss": metrics["loss"],
                           "losses": state.losses, "log_every": stage.log_every,
                           "samples_per_second": state.samples_per_second * world,
                           "data_wait_fraction": state.data_wait_fraction,
                           "warm_data_wait_fraction": state.warm_data_wait_fraction,
                           "resumed_at_step": resumed_at}
                finish_checkpoint(processor, tmp, lineage)
            if rank == 0:
                (Path(tmp) / LOOP_STATE).write_text(json.dumps(state.to_dict()))
            files = any(Path(tmp).rglob("*.*"))
            checkpoint = ray.train.Checkpoint.from_directory(tmp) if files else None
            ray.train.report({**progress(state, metrics), "final": final},
                             checkpoint=checkpoint,
                             validation=bool(final and config["validate"] and checkpoint))

    train_epochs(engine, epoch_batches, stage, total, state, on_log=on_log,
                 on_checkpoint=on_checkpoint)


class EpochFeed:
    """Each epoch's batches; the first epoch's first batch is fetched in the background
    from construction on, so the pipeline warms up while the caller does other work."""

    def __init__(self, batches, first_epoch: int):
        self._batches, self._first = batches, first_epoch
        self._iterator = iter(batches(first_epoch))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="epoch-feed")
        self._head = self._pool.submit(next, self._iterator, _END)

    def __call__(self, epoch: int):
        if epoch != self._first or self._head is None:
            yield from self._batches(epoch)
            return
        head, self._head = self._head.result(), None
        self._pool.shutdown(wait=False)
        if head is _END:
            return
        yield head
        yield from self._iterator


_END = object()
