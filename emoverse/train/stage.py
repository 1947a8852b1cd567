"""One M2SE stage as one process of a training group runs it. No Ray.

`train(job, session)` is the whole stage: load the parent checkpoint, choose the trainable
parts, build the engine, resume from the session's checkpoint, train every epoch, and
checkpoint with lineage. The session is what the runtime gives the process: its rank and
device, its batches, the checkpoint to resume from, and where reports and checkpoints go.
Ray Train's worker (`emoverse.distributed.train_worker`) is one session; `LocalSession`
(one process, rows in memory, checkpoints in a directory) is another, so a stage runs and
is tested without a cluster.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import (Any, Callable, ContextManager, Iterable, Iterator, Mapping, Protocol,
                    Sequence)

import numpy as np
import pandas as pd

from emoverse.console import logger
from emoverse.model.checkpoint import (apply_trainable, attention_implementation,
                                       finish_checkpoint, load_model, load_processor,
                                       trainable_summary, weights_dir)
from emoverse.model.inputs import Collator, fit_processor
from emoverse.phase_clock import Countdown
from emoverse.recipe import StageConfig
from emoverse.tracking.sender import StepLog, StepTracking
from emoverse.train.engine import make_engine
from emoverse.train.loop import LoopState, train_epochs
from emoverse.train.reproducibility import batch_seed, library_versions, use_deterministic_torch

log = logger(__name__)
LOOP_STATE = "loop_state.json"  # the loop's position, in every resumable checkpoint
ENGINE_DIR = "engine"  # the engine's optimiser and schedule state
PREDICTIONS = "predictions"  # the final checkpoint's answers to the evaluation rows


@dataclass(frozen=True)
class PredictJob:
    """Answer the evaluation rows with the stage's final model, in the stage's processes,
    each its share (`share_of`), into the final checkpoint's `predictions/`. The rows are
    the usable clips of `split` (of `tasks`, when given) in the media cache `cache_dir`."""

    max_new_tokens: int | dict[str, int]  # one budget, or one per task
    batch_size: int = 32
    cache_dir: str | None = None  # None: the session holds the rows itself (LocalSession)
    split: str = "test"
    tasks: tuple[str, ...] | None = None
    hears: bool = False  # the rows carry their audio (the stage's `audio`)

    def __post_init__(self):
        if self.tasks is not None:  # a list, after a trip through JSON or a driver's dict
            object.__setattr__(self, "tasks", tuple(self.tasks))


@dataclass(frozen=True)
class StageJob:
    """Everything a process needs to run a stage: Ray Train's `train_loop_config`."""

    stage: StageConfig
    init_from: str  # the parent: a model directory, hub id or stage checkpoint
    total_steps: int
    torch_threads: int = 1
    shuffle_buffer: int = 0  # rows each process mixes its shard across (0: none)
    lineage: dict = field(default_factory=dict)  # recorded with the final checkpoint
    validate: bool = False  # ask the runtime to validate the final checkpoint
    frame_size: int | None = None  # media.size: the processor takes frames at this size
    predict: PredictJob | None = None  # answer the session's evaluation rows at the end
    # torch's deterministic algorithms and a seed per micro-batch (the recipe's
    # `deterministic`; the session must then give each process a fixed share of the data)
    deterministic: bool = False
    tracking: StepTracking | None = None  # the MLflow run that rank 0 logs step metrics into

    def __post_init__(self):
        if self.predict and self.stage.strategy.kind != "ddp":
            # ZeRO-sharded weights would need every process in each generation step
            raise ValueError(f"stage {self.stage.name!r}: answering evaluation rows in the "
                             f"training processes needs strategy.kind=ddp")

    def to_config(self) -> dict:
        return {**asdict(self), "stage": self.stage.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config: Mapping) -> "StageJob":
        predict, tracking = config.get("predict"), config.get("tracking")
        return cls(**{**config, "stage": StageConfig(**config["stage"]),
                      "predict": PredictJob(**predict) if predict else None,
                      "tracking": StepTracking(**tracking) if tracking else None})


class Session(Protocol):
    """What the runtime gives one process of a stage."""

    rank: int
    world_size: int
    device: Any  # a torch device

    def epoch_batches(self, epoch: int, batch_size: int,
                      collate: Callable[[Mapping], dict]) -> Iterable[dict]:
        """This process's micro-batches of `epoch`, collated."""

    def prepare(self, model):
        """The model on this process's device, wrapped for data parallelism if needed."""

    def restored(self) -> ContextManager[Path | None]:
        """The directory of the checkpoint to resume from, or None to start afresh."""

    def report(self, metrics: dict, checkpoint: Path | None = None,
               validate: bool = False) -> None:
        """Progress, and a checkpoint directory to keep (every process, the same calls)."""

    def eval_rows(self) -> pd.DataFrame:
        """This process's share of the rows to answer at the end (`StageJob.predict`):
        sample_id, task, prompt, frames (and the audio columns when the stage hears)."""


def train(job: StageJob, session: Session) -> LoopState:
    """Run `job`'s stage on `session`, resuming from its checkpoint; the final loop state.
    The process of rank 0 logs the step metrics to MLflow when `job.tracking` says where."""
    steps = StepLog(job.tracking) if job.tracking and session.rank == 0 else None
    try:
        return _train(job, session, steps)
    finally:
        if steps:
            steps.close()


def _train(job: StageJob, session: Session, steps: StepLog | None) -> LoopState:
    import torch

    stage, main = job.stage, session.rank == 0
    torch.set_num_threads(job.torch_threads)
    if job.deterministic:
        use_deterministic_torch()
    torch.manual_seed(stage.seed)
    processor = load_processor(job.init_from)
    if job.frame_size:  # saved with the checkpoint, so evaluation and serving see the same
        fit_processor(processor, job.frame_size)
    collate = Collator(processor, stage.max_length, hears=stage.audio)
    per_process = stage.batch_size // session.world_size
    with session.restored() as resume:
        state = LoopState.from_dict(json.loads((resume / LOOP_STATE).read_text())) \
            if resume else LoopState()
        # Start the data pipeline now: its start-up overlaps the model's loading.
        feed = EpochFeed(lambda epoch: session.epoch_batches(epoch, per_process, collate),
                         first_epoch=state.epoch)
        model = load_model(job.init_from, attention=attention_implementation(
            stage.attention, cuda=getattr(session.device, "type", "cpu") == "cuda"))
        if stage.gradient_checkpointing:
            for config in (model.config, getattr(model.config, "text_config", None)):
                if config is not None:
                    config.use_cache = False  # no KV cache to keep when recomputing
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(stage.seed)  # new parameters (LoRA) start the same in every run
        model = apply_trainable(model, stage.trainable, hears=stage.audio)
        if main:
            log.info("[%s] %s", stage.name, trainable_summary(model))
        # DeepSpeed wraps and distributes the model itself.
        model = session.prepare(model) if stage.strategy.kind == "ddp" else \
            model.to(session.device)
        engine = make_engine(model, stage, job.total_steps)
        if resume:
            engine.load(resume / ENGINE_DIR)
            if main:
                log.info("[%s] resumed from a checkpoint at step %d/%d (epoch %d, %d steps in)",
                         stage.name, state.step, job.total_steps, state.epoch + 1,
                         state.epoch_step)
    resumed_at = state.step if resume else None
    device = getattr(engine, "device", None) or session.device

    def epoch_batches(epoch: int):
        for batch in feed(epoch):
            yield {k: v.to(device) for k, v in batch.items()}

    def progress(state: LoopState, metrics: dict) -> dict:
        return {"step": state.step, "epoch": state.epoch, "loss": metrics["loss"],
                "samples_per_second": state.samples_per_second * session.world_size,
                "data_wait_fraction": state.data_wait_fraction}

    countdown = Countdown(state.step)

    def on_log(state: LoopState, metrics: dict) -> None:
        report = {**progress(state, metrics), "lr": metrics["lr"]}
        if main:
            log.info("[%s] step %d/%d loss %.4f lr %.2e %.0f samples/s data wait %.0f%%, %s",
                     stage.name, state.step, job.total_steps, metrics["loss"], metrics["lr"],
                     report["samples_per_second"], 100 * state.data_wait_fraction,
                     countdown.left(state.step, job.total_steps))
        if steps:
            steps.log(state.step, report)
        session.report(report)  # every process reports at the same steps

    def on_checkpoint(state: LoopState, metrics: dict, final: bool) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            engine.save(Path(tmp) / ENGINE_DIR, is_main=main)  # collective for DeepSpeed
            if final and engine.save_pretrained(Path(tmp) / weights_dir(engine.module),
                                                is_main=main):
                # `audio`: evaluation and serving feed this model the clip's audio too
                lineage = {**job.lineage, "audio": stage.audio,
                           "step": state.step, "loss": metrics["loss"],
                           "losses": state.losses, "log_every": stage.log_every,
                           "samples_per_second": state.samples_per_second * session.world_size,
                           "data_wait_fraction": state.data_wait_fraction,
                           "warm_data_wait_fraction": state.warm_data_wait_fraction,
                           "resumed_at_step": resumed_at,
                           "versions": library_versions()}  # the process that trained
                finish_checkpoint(processor, tmp, lineage)
            if final and job.predict:
                answer_share(engine.module, processor, session, job.predict,
                             Path(tmp) / PREDICTIONS, stage.name)
            if main:
                (Path(tmp) / LOOP_STATE).write_text(json.dumps(state.to_dict()))
            written = any(Path(tmp).rglob("*.*"))
            session.report({**progress(state, metrics), "final": final},
                           checkpoint=Path(tmp) if written else None,
                           validate=bool(final and job.validate and written))

    def seed_batch(epoch: int, micro_batch: int) -> None:
        torch.manual_seed(batch_seed(stage.seed, session.rank, epoch, micro_batch))

    return train_epochs(engine, epoch_batches, stage, job.total_steps, state, on_log=on_log,
                        on_checkpoint=on_checkpoint,
                        on_batch=seed_batch if job.deterministic else None)


def share_of(rows: pd.DataFrame, rank: int, world_size: int) -> pd.DataFrame:
    """The rows process `rank` answers: split by a hash of the sample id, so each row is
    answered exactly once, whatever order each process reads the rows in."""
    keys = np.array([zlib.crc32(str(s).encode()) for s in rows.sample_id], dtype=np.int64)
    return rows[keys % world_size == rank]


def answer_share(model, processor, session: Session, job: PredictJob, out: Path,
                 stage: str) -> None:
    """Answer this process's evaluation rows with the trained `model` (it is not trained
    further) into `out/rank-<rank>.parquet`."""
    from emoverse.model.generation import AnswerGenerator, answer_rows

    rows = session.eval_rows()
    if session.rank == 0:
        log.info("[%s] answering the evaluation rows in the training processes (%d here)",
                 stage, len(rows))
    generator = AnswerGenerator.from_model(model, processor, job.max_new_tokens,
                                           hears=job.hears)
    out.mkdir(parents=True, exist_ok=True)
    answer_rows(generator, rows, job.batch_size).to_parquet(
        out / f"rank-{session.rank:05d}.parquet", index=False)


def read_predictions(checkpoint: str | Path) -> pd.DataFrame | None:
    """The answers a stage's processes wrote into its final checkpoint, or None."""
    files = sorted((Path(checkpoint) / PREDICTIONS).glob("rank-*.parquet"))
    if not files:
        return None
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


class EpochFeed:
    """Each epoch's batches; the first epoch's first batch is fetched in the background
    from construction on, so the pipeline warms up while the caller does other work."""

    def __init__(self, batches: Callable[[int], Iterable[dict]], first_epoch: int):
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


class LocalSession:
    """One process, no cluster: rows held in memory, reshuffled every epoch with a seeded
    permutation, checkpoints copied to `storage/checkpoint_<step>`, reports kept in
    `reports`. Resumes from the newest checkpoint under `storage`, like a Ray Train run."""

    rank, world_size = 0, 1

    def __init__(self, rows: Sequence[Mapping], storage: str | Path, seed: int = 0,
                 device: str = "cpu", eval_rows: pd.DataFrame | None = None):
        import torch

        self.rows, self.storage, self.seed = rows, Path(storage), seed
        self._eval_rows = eval_rows
        self.device = torch.device(device)
        self.reports: list[dict] = []

    def epoch_batches(self, epoch: int, batch_size: int,
                      collate: Callable[[Mapping], dict]) -> Iterator[dict]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        for start in range(0, len(order) - batch_size + 1, batch_size):  # whole batches
            chunk = [self.rows[i] for i in order[start:start + batch_size]]
            yield collate({key: [row[key] for row in chunk] for key in chunk[0]})

    def prepare(self, model):
        return model.to(self.device)

    @contextmanager
    def restored(self) -> Iterator[Path | None]:
        yield self.latest_checkpoint()

    def eval_rows(self) -> pd.DataFrame:
        if self._eval_rows is None:
            raise ValueError("this LocalSession was given no eval_rows to answer")
        return self._eval_rows

    def latest_checkpoint(self) -> Path | None:
        saved = sorted(self.storage.glob("checkpoint_*"))
        return saved[-1] if saved else None

    def report(self, metrics: dict, checkpoint: Path | None = None,
               validate: bool = False) -> None:
        self.reports.append(metrics)
        if checkpoint is not None:
            shutil.copytree(checkpoint, self.storage / f"checkpoint_{metrics['step']:08d}",
                            dirs_exist_ok=True)
