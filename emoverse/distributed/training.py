"""Run one M2SE stage on Ray Train: the thin adapter around `emoverse.train.loop`.

The driver realises the stage's mixture over the media cache, builds a Ray Dataset that
repeats each row by its multiplicity, and fits a `TorchTrainer`. Each worker gets its
whole setup through `train_loop_config`, touches Ray only for its data shard, its
checkpoint and its reports, and otherwise runs the plain training loop.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from emoverse.media.cache import clip_files
from emoverse.emt.mixture import realise
from emoverse.recipe import ScalingConfig, StageConfig

ROW_COLUMNS = ["sample_id", "prompt", "target", "frames"]


def repeat_rows(batch: dict[str, np.ndarray], multiplicity: dict[str, int]) -> dict:
    """Repeat each row by its mixture multiplicity (0 drops it)."""
    counts = np.array([multiplicity.get(str(s), 0) for s in batch["sample_id"]], dtype=int)
    return {k: np.repeat(v, counts, axis=0) for k, v in batch.items()}


def plan_epoch(cache_dir: str | Path, stage: StageConfig) -> tuple[dict[str, int], dict]:
    """The stage's per-sample multiplicities over the usable training clips."""
    import pyarrow.parquet as pq

    t = pq.read_table(clip_files(cache_dir), columns=["sample_id", "task", "source", "split", "ok"])
    t = t.to_pandas()
    t = t[t.ok & (t.split == "train")]
    return realise(t.sample_id.tolist(), t.task.tolist(), t.source.tolist(), stage.mixture,
                   stage.epoch_size, stage.seed)


def steps_per_epoch(rows: int, stage: StageConfig, workers: int) -> int:
    per_worker = rows // workers  # the split is equalised, dropping the tail
    return per_worker // (stage.batch_size // workers) // stage.grad_accum


def fits_in_object_store(cache_dir: str | Path, rows: int, share: float = 0.25) -> bool:
    """Whether `rows` clips of this cache take less than `share` of the object store."""
    import pyarrow.parquet as pq
    import ray

    files = sorted(Path(clip_files(cache_dir)).glob("*.parquet"))
    meta = [pq.ParquetFile(f).metadata for f in files]
    total_rows = sum(m.num_rows for m in meta) or 1
    row_bytes = sum(m.row_group(i).total_byte_size for m in meta
                    for i in range(m.num_row_groups)) / total_rows
    store = ray.available_resources().get("object_store_memory", 0)
    return rows * row_bytes < share * store


def worker_loop(config: dict) -> None:
    """Ray Train worker: build the model from config, train, report and checkpoint."""
    import ray.train
    import torch
    import ray.train.torch

    from emoverse.model.checkpoint import (apply_trainable, load_model, load_processor,
                                           save_checkpoint, trainable_summary)
    from emoverse.train.batching import Collator
    from emoverse.train.loop import train_epochs

    torch.set_num_threads(config["torch_threads"])
    stage = StageConfig(**config["stage"])
    torch.manual_seed(stage.seed)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    processor = load_processor(config["init_from"])
    model = apply_trainable(load_model(config["init_from"]), stage.trainable)
    if rank == 0:
        print(f"[{stage.name}] {trainable_summary(model)}", flush=True)
    model = ray.train.torch.prepare_model(model)
    device = ray.train.torch.get_device()
    shard = ray.train.get_dataset_shard("train")
    collate = Collator(processor, stage.max_length)
    per_worker = stage.batch_size // ctx.get_world_size()

    def epoch_batches(epoch: int):
        for batch in shard.iter_torch_batches(
                batch_size=per_worker, collate_fn=collate, drop_last=True, prefetch_batches=4,
                local_shuffle_buffer_size=config["shuffle_buffer"],
                local_shuffle_seed=stage.seed * 1000 + epoch):
            yield {k: v.to(device) for k, v in batch.items()}

    def on_log(state, metrics):
        if rank == 0:
            rate = state.samples_per_second * ctx.get_world_size()
            print(f"[{stage.name}] step {state.step}/{config['total_steps']} "
                  f"loss {metrics['loss']:.4f} lr {metrics['lr']:.2e} {rate:.0f} samples/s "
                  f"data wait {state.data_wait_fraction:.0%}", flush=True)

    def on_epoch_end(state, metrics):
        report = {"epoch": state.epoch, "step": state.step, "loss": metrics["loss"],
                  "data_wait_fraction": state.data_wait_fraction}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0 and state.epoch == stage.epochs:
                inner = model.module if hasattr(model, "module") else model
                lineage = {**config["lineage"], "step": state.step, "loss": metrics["loss"],
                           "losses": state.losses}
                save_checkpoint(inner, processor, tmp, lineage)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(report, checkpoint=checkpoint)

    train_epochs(model, epoch_batches, stage, config["total_steps"], on_log=on_log,
                 on_epoch_end=on_epoch_end)


def fit_stage(stage: StageConfig, cache_dir: str | Path, init_from: str | Path,
              run_dir: str | Path, scaling: ScalingConfig, lineage: dict) -> Path:
    """Train one stage from `init_from`; returns the persisted checkpoint directory."""
    import ray.data
    from ray.train import CheckpointConfig, RunConfig
    from ray.train import ScalingConfig as RayScaling
    from ray.train.torch import TorchTrainer

    if stage.batch_size % scaling.num_workers:
        raise ValueError(f"stage {stage.name!r}: batch_size {stage.batch_size} is not divisible "
                         f"by num_workers {scaling.num_workers}")
    multiplicity, seen = plan_epoch(cache_dir, stage)
    rows = sum(multiplicity.values())
    per_epoch = steps_per_epoch(rows, stage, scaling.num_workers)
    if per_epoch < 1:
        raise ValueError(f"stage {stage.name!r}: {rows} samples per epoch is less than one "
                         f"step of batch {stage.batch_size} x accumulation {stage.grad_accum}")
    run_dir = Path(run_dir)
    (run_dir / f"{stage.name}-mixture.json").write_text(json.dumps(
        {"samples_per_epoch": rows, "by_entry": seen, "epochs": stage.epochs}, indent=2))
    ds = ray.data.read_parquet(clip_files(cache_dir), columns=ROW_COLUMNS).map_batches(
        repeat_rows, fn_kwargs={"multiplicity": multiplicity}, batch_format="numpy")
    if fits_in_object_store(cache_dir, rows):
        # Multi-epoch stages re-run a streaming pipeline every epoch (seconds of start-up
        # each time); an epoch that fits comfortably is computed once and kept.
        ds = ds.materialize()
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "stage": stage.model_dump(),
            "init_from": str(init_from),
            "torch_threads": scaling.torch_threads,
            "total_steps": per_epoch * stage.epochs,
            "shuffle_buffer": min(2048, max(stage.batch_size, rows // 2)),
            "lineage": {**lineage, "stage": stage.name, "parent": str(init_from),
                        "mixture_seen": seen},
        },
        scaling_config=RayScaling(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                  resources_per_worker={"CPU": scaling.cpus_per_worker}),
        datasets={"train": ds},
        run_config=RunConfig(name=stage.name, storage_path=str((run_dir / "ray").resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=1)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"stage {stage.name!r} finished without a checkpoint")
    return Path(result.checkpoint.path)
