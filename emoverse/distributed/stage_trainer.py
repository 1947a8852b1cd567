"""Run one M2SE stage on Ray Train: the thin adapter around `emoverse.train.stage.train`.

The driver realises the stage's mixture over the media cache, builds a Ray Dataset that
repeats each row by its multiplicity (in a deterministic run, one per worker: its seeded
share, `train_datasets`), and fits a `TorchTrainer` whose workers run
`emoverse.distributed.train_worker.worker_loop`. Ray Train restarts a failed worker group
(`FailureConfig`) from the latest checkpoint, and re-running a stage with the same run
directory (the same `RunConfig(storage_path, name)`) resumes it after a driver restart.
"""

from __future__ import annotations

import copy
import json
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from emoverse.distributed.session import driver_dataset, quiet_progress, train_log_level
from emoverse.distributed.train_worker import shard_name, worker_loop
from emoverse.media.cache import clip_files, read_rows
from emoverse.emt.mixture import realise
from emoverse.model.inputs import AUDIO_COLUMNS
from emoverse.recipe import ScalingConfig, StageConfig
from emoverse.train.reproducibility import library_versions
from emoverse.train.stage import PredictJob, StageJob

ROW_COLUMNS = ["sample_id", "prompt", "target", "frames"]


def row_columns(stage: StageConfig) -> list[str]:
    """The cache columns a stage trains on: the audio too when it hears."""
    return [*ROW_COLUMNS, *(AUDIO_COLUMNS if stage.audio else ())]

SHUFFLE_BATCHES = 8  # each worker mixes rows across this many global batches' worth
EPOCH_BLOCK_ROWS = 256  # rows per block of an epoch built in the driver
EPOCH_ORDER_KEY = 0x45504F43  # the epoch order's own random stream ("EPOC")
# How an epoch's rows are ordered and dealt to workers; recorded in lineage, and changed
# whenever the same seed would give another order.
DATA_ORDER = "data-order/2"


def repeat_rows(batch: dict[str, np.ndarray], multiplicity: dict[str, int],
                seed: int = 0) -> dict:
    """Repeat each row by its mixture multiplicity (0 drops it), in a shuffled order.

    Shuffling here, per block and deterministically, keeps the copies of a sample apart,
    so the workers' local shuffle buffer can stay a few batches small: a large one must
    fill before the first batch, which on a streaming epoch means most of the read.
    """
    counts = np.array([multiplicity.get(str(s), 0) for s in batch["sample_id"]], dtype=int)
    key = zlib.crc32(str(batch["sample_id"][0]).encode()) if len(counts) else 0
    order = np.random.default_rng([seed, key]).permutation(int(counts.sum()))
    return {k: np.repeat(v, counts, axis=0)[order] for k, v in batch.items()}


def deal(multiplicity: dict[str, int], seed: int = 0, workers: int = 1) -> list[list[str]]:
    """The epoch's copies of its clips (each repeated by its multiplicity) in one seeded
    order, dealt in turn into `workers` shares of equal length (a tail shorter than one
    copy per worker is dropped). The order depends on the seed and the multiplicities
    only, never on the order the clips were listed or cached in."""
    ids = sorted(s for s, n in multiplicity.items() if n > 0)
    copies = np.repeat(np.array(ids, dtype=object), [multiplicity[s] for s in ids])
    copies = copies[np.random.default_rng([seed, EPOCH_ORDER_KEY]).permutation(len(copies))]
    usable = len(copies) // workers * workers
    return [copies[rank:usable:workers].tolist() for rank in range(workers)]


def epoch_tables(cache_dir: str | Path, order: list[str], columns: list[str] = ROW_COLUMNS,
                 block_rows: int = EPOCH_BLOCK_ROWS) -> list:
    """The rows of `order` (sample ids, a clip once per copy) read in this process, in that
    order, as Arrow tables of `block_rows` rows. For an epoch that fits in memory this is
    faster than Ray Data's file listing and read tasks, and mixes better than shuffling
    within blocks. Only the epoch's clips are kept while reading (`read_rows`), so a cache
    larger than the epoch is not held whole."""
    import pyarrow as pa
    import pyarrow.compute as pc

    chosen = pa.array(sorted(set(order)), pa.string())
    table = read_rows(cache_dir, columns,
                      lambda batch: pc.is_in(batch["sample_id"], value_set=chosen))
    if table is None:
        return []
    position = {s: i for i, s in enumerate(table.column("sample_id").to_pylist())}
    index = np.array([position[s] for s in order], dtype=np.int64)
    # take() per block: each block owns its buffers, so putting it in the object store
    # copies only its rows
    return [table.take(index[start:start + block_rows])
            for start in range(0, len(index), block_rows)]


def plan_epoch(cache_dir: str | Path, stage: StageConfig) -> tuple[dict[str, int], dict]:
    """The stage's per-sample multiplicities over the usable training clips."""
    import pyarrow.parquet as pq

    t = pq.read_table(clip_files(cache_dir), columns=["sample_id", "task", "source", "split", "ok"])
    # sorted: which clips fill an entry's remainder must not depend on the cache's layout
    t = t.to_pandas().sort_values("sample_id", kind="stable")
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


def total_steps(stage: StageConfig, per_epoch: int) -> int:
    return min(per_epoch * stage.epochs, stage.max_steps or per_epoch * stage.epochs)


def ray_scaling(scaling: ScalingConfig):
    """Ray Train's ScalingConfig for a recipe's: workers, GPUs and each worker's resources."""
    from ray.train import ScalingConfig as RayScaling

    return RayScaling(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                      resources_per_worker=scaling.train_worker_resources())


def validate_checkpoint(checkpoint, **kwargs) -> dict:
    """Ray Train validation task: `emoverse.evaluation.validation.validate` on a checkpoint."""
    from emoverse.evaluation.validation import validate

    with checkpoint.as_directory() as directory:
        return validate(directory, **kwargs)


def train_datasets(cache_dir: str | Path, multiplicity: dict[str, int], stage: StageConfig,
                   workers: int, deterministic: bool, materialize: bool):
    """The stage's Ray Datasets by name, and Ray Train's DataConfig for them (None: its
    default). Multi-epoch stages re-run a streaming pipeline every epoch (seconds of
    start-up each time), so an epoch that fits comfortably (`materialize`) is built once,
    in the driver, and kept. Otherwise it streams from the cache, each block's rows
    repeated by their multiplicities. Not `deterministic`: one dataset that Ray Train
    splits among the workers as they ask for blocks, which is fastest but gives each worker
    different rows from run to run. `deterministic`: one dataset per worker
    (`shard_name`), its seeded share of the epoch (`deal`), read in order."""
    import ray.data
    from ray.train import DataConfig

    shares = deal(multiplicity, stage.seed, workers if deterministic else 1)
    if materialize:
        built = [driver_dataset(epoch_tables(cache_dir, share, row_columns(stage)))
                 for share in shares]
    else:
        files = sorted(str(f) for f in Path(clip_files(cache_dir)).glob("*.parquet"))
        built = [ray.data.read_parquet(files).select_columns(row_columns(stage))
                 .randomize_block_order(seed=stage.seed)
                 .map_batches(repeat_rows, batch_format="numpy", fn_kwargs={
                     "multiplicity": dict(Counter(share)), "seed": stage.seed})
                 for share in shares]
    for ds in built:
        quiet_progress(ds.context)
    if not deterministic:
        return {shard_name(None): built[0]}, None
    # the driver's options (what Ray Train would apply), in order
    ordered = copy.deepcopy(ray.data.DataContext.get_current().execution_options)
    ordered.preserve_order = True
    return ({shard_name(rank): ds for rank, ds in enumerate(built)},
            DataConfig(datasets_to_split=[], execution_options=ordered))


def run_facts(seed: int, deterministic: bool, world_size: int) -> dict:
    """What a stage's lineage records to reproduce it, beside the recipe and data digests
    (the training process adds its own library `versions`: the ones that trained)."""
    return {"seed": seed, "deterministic": deterministic, "data_order": DATA_ORDER,
            "world_size": world_size, "driver_versions": library_versions()}


def fit_stage(stage: StageConfig, cache_dir: str | Path, init_from: str | Path,
              storage: str | Path, scaling: ScalingConfig, lineage: dict,
              materialize: bool | None = None, validation: dict | None = None,
              frame_size: int | None = None, predict: dict | None = None,
              deterministic: bool = False, tracking=None):
    """Train one stage from `init_from`; returns its final checkpoint directory.

    `storage` holds Ray Train's run state (`storage/<stage name>/`) and the stage's
    mixture report; running again with the same `storage` resumes an unfinished stage.
    `materialize`: keep the epoch's rows in the object store (default: when they fit).
    `validation`: keyword arguments of `validate` (cache_dir, manifest, split,
    max_new_tokens, batch_size) to validate the final checkpoint in Ray Train; its metrics
    are reported with it. `frame_size`: the recipe's media.size, which the processor is
    fitted to take as it is. `predict`: {split, tasks, max_new_tokens, batch_size}: the
    workers answer those rows with the final model into the checkpoint's `predictions/`
    (`emoverse.train.stage.read_predictions`). `deterministic`: each worker trains on its
    own seeded share of the epoch (`train_datasets`) with torch's deterministic algorithms
    (the recipe's `deterministic`). `tracking`: the stage's MLflow run (a
    `StepTracking`), which the worker of rank 0 logs step metrics into. Returns
    (checkpoint directory, final reported metrics).
    """
    from ray.train import (CheckpointConfig, FailureConfig, LoggingConfig,
                           RunConfig, ValidationConfig, ValidationTaskConfig)
    from ray.train.torch import TorchTrainer
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    if stage.batch_size % scaling.num_workers:
        raise ValueError(f"stage {stage.name!r}: batch_size {stage.batch_size} is not divisible "
                         f"by num_workers {scaling.num_workers}")
    multiplicity, seen = plan_epoch(cache_dir, stage)
    rows = sum(multiplicity.values())
    per_epoch = steps_per_epoch(rows, stage, scaling.num_workers)
    if per_epoch < 1:
        raise ValueError(f"stage {stage.name!r}: {rows} samples per epoch is less than one "
                         f"step of batch {stage.batch_size} x accumulation {stage.grad_accum}")
    storage = Path(storage).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    (storage / f"{stage.name}-mixture.json").write_text(json.dumps(
        {"samples_per_epoch": rows, "by_entry": seen, "epochs": stage.epochs}, indent=2))
    datasets, data_config = train_datasets(
        cache_dir, multiplicity, stage, scaling.num_workers, deterministic,
        materialize if materialize is not None else fits_in_object_store(cache_dir, rows))
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=StageJob(
            stage=stage, init_from=str(init_from), total_steps=total_steps(stage, per_epoch),
            torch_threads=scaling.torch_threads,
            shuffle_buffer=SHUFFLE_BATCHES * stage.batch_size,
            lineage={**lineage, "stage": stage.name, "mixture_seen": seen,
                     **run_facts(stage.seed, deterministic, scaling.num_workers)},
            deterministic=deterministic,
            validate=validation is not None, frame_size=frame_size,
            predict=PredictJob(**predict, cache_dir=str(cache_dir), hears=stage.audio)
            if predict else None, tracking=tracking).to_config(),
        scaling_config=ray_scaling(scaling),
        datasets=datasets, dataset_config=data_config,
        validation_config=ValidationConfig(
            fn=validate_checkpoint, task_config=ValidationTaskConfig(fn_kwargs=validation),
            # outside any placement group of a caller (a Tune trial reserves almost nothing)
            ray_remote_kwargs={"num_cpus": 0.5, "scheduling_strategy":
                               PlacementGroupSchedulingStrategy(placement_group=None)},
        ) if validation else None,
        run_config=RunConfig(name=stage.name, storage_path=str(storage),
                             checkpoint_config=CheckpointConfig(num_to_keep=2),
                             failure_config=FailureConfig(max_failures=scaling.max_failures),
                             logging_config=LoggingConfig(log_level=train_log_level())),
    )
    result = trainer.fit()
    if result.checkpoint is None or not (Path(result.checkpoint.path) / "lineage.json").is_file():
        raise RuntimeError(f"stage {stage.name!r} finished without a final checkpoint "
                           f"(see {storage / stage.name})")
    return Path(result.checkpoint.path), dict(result.metrics or {})
