"""`emoverse bench train --like NAME [--layers N] [--model DIR] [--steps S] [--batch-size B] [--audio SECONDS]`

A recipe's first stage at a real model's shapes, in one process without Ray (the plain
stage, `emoverse.train.stage.train` over a `LocalSession`), so it also runs where Ray is
not installed. The model is a random-init member of family NAME at real width (`--layers`
cuts its depth; default: the real depth) or, with `--model`, a real checkpoint directory.
Rows are EMT prompts and answers of the stage's tasks (from the demo generator) with
random frames at the recipe's frames and size: the pixels do not change the cost. Prints
samples/s and tokens/s once warm (the first `--warmup` steps excluded), and peak memory
(GPU: torch's peak allocation; CPU: the process's peak resident set). `--audio SECONDS`:
every row also carries that much audio (noise at 16 kHz) and the stage hears it, for a
family that hears (Qwen2.5-Omni); run it beside a run without to see what hearing costs.
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from emoverse.console import logger
from emoverse.emt.demo import plan
from emoverse.recipe import Recipe, load_recipe

log = logger(__name__)
RECIPE_OF = {"internvl2-4b": "m2se-paper", "qwen2.5-vl-3b-instruct": "m2se-qwen2.5-vl"}


def bench_rows(recipe: Recipe, count: int, seed: int = 0, audio_samples: int = 0) -> list[dict]:
    """`count` rows of stage 1's tasks: demo prompts and answers, random frames (and
    `audio_samples` of noise, when given)."""
    tasks = {e.task for e in recipe.stages[0].mixture}
    samples = [s.row for s in plan(max(60, 4 * count), seed) if s.row["task"] in tasks]
    rng = np.random.default_rng(seed)
    shape = (recipe.media.num_frames, recipe.media.size, recipe.media.size, 3)
    rows = [{"prompt": r["prompt"], "target": r["target"],
             "frames": rng.integers(0, 256, shape, dtype=np.uint8)}
            for r in (samples * count)[:count]]
    for row in rows if audio_samples else []:
        row.update(audio=rng.integers(-3000, 3000, audio_samples, dtype=np.int16),
                   audio_samples=audio_samples)
    return rows


class TimedSession:
    """A LocalSession that notes when each step's report arrives."""

    def __init__(self, session):
        self.inner = session
        self.rank, self.world_size, self.device = 0, 1, session.device
        self.times: list[tuple[int, float]] = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def report(self, metrics: dict, checkpoint=None, validate: bool = False) -> None:
        if checkpoint is None:
            self.times.append((metrics["step"], time.perf_counter()))
        self.inner.report(metrics, checkpoint, validate)


def mean_tokens(rows: list[dict], processor, size: int, hears: bool = False) -> float:
    from emoverse.model.inputs import Collator, fit_processor

    collate = Collator(fit_processor(processor, size), max_length=10 ** 9, hears=hears)
    lengths = [int(collate({k: [r[k]] for k in r})["attention_mask"].sum()) for r in rows]
    return float(np.mean(lengths))


def run(like: str, layers: int | None = None, model: str | None = None, steps: int = 8,
        warmup: int = 2, batch_size: int | None = None, recipe_name: str | None = None,
        precision: str | None = None, workdir: str | None = None,
        audio_seconds: float = 0.0) -> dict:
    import torch

    from emoverse.model.checkpoint import load_processor
    from emoverse.model.families import load_family, write_like
    from emoverse.model.vocabulary import instruction_corpus
    from emoverse.train.stage import LocalSession, StageJob, train

    family = load_family(like)
    recipe = load_recipe(recipe_name or RECIPE_OF.get(like, "m2se-paper"))
    cuda = torch.cuda.is_available()
    stage = recipe.stages[0]
    micro = batch_size or max(1, stage.batch_size // recipe.scaling.num_workers)
    stage = stage.model_copy(update={
        "max_steps": warmup + steps, "batch_size": micro, "grad_accum": 1, "log_every": 1,
        "warmup_steps": 0, "checkpoint_every": None,
        "precision": precision or (stage.precision if cuda else "fp32"),
        "audio": audio_seconds > 0,
        "strategy": stage.strategy.model_copy(update={"kind": "ddp"})})
    work = Path(workdir or tempfile.mkdtemp(prefix="emoverse-bench-like-"))
    if model is None:
        log.info(f"writing a random-init {family.title}, "
                 f"{f'{layers} layer(s) per stack' if layers else 'real depth'}, under {work}")
        model = str(write_like(like, work / "model", instruction_corpus(), layers=layers,
                               dtype="bfloat16" if cuda else "float32"))
    rows = bench_rows(recipe, micro * (warmup + steps),
                      audio_samples=int(round(audio_seconds * 16000)))
    tokens = mean_tokens(rows[:4], load_processor(model), recipe.media.size, stage.audio)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    session = TimedSession(LocalSession(rows, work / "run", device="cuda" if cuda else "cpu"))
    log.info(f"{stage.name}: {warmup} + {steps} steps of {micro} samples "
             f"(~{tokens:.0f} tokens each), {stage.precision}, attention {stage.attention}, "
             f"gradient checkpointing {stage.gradient_checkpointing}")
    train(StageJob(stage=stage, init_from=model, total_steps=warmup + steps,
                   torch_threads=torch.get_num_threads(), frame_size=recipe.media.size), session)
    (s0, t0), (s1, t1) = [t for t in session.times if t[0] == warmup][0], session.times[-1]
    per_second = (s1 - s0) * micro / (t1 - t0)
    peak = torch.cuda.max_memory_allocated() if cuda else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"family": like, "model": model, "layers": layers, "recipe": recipe.name,
            "stage": stage.name, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "precision": stage.precision, "batch_size": micro, "steps": steps,
            "frames": recipe.media.num_frames, "size": recipe.media.size,
            "audio_seconds": audio_seconds,
            "tokens_per_sample": tokens, "samples_per_second": per_second,
            "tokens_per_second": per_second * tokens, "peak_memory_gib": peak / 2 ** 30,
            "peak_memory_kind": "GPU allocated" if cuda else "process RSS"}


def report(r: dict) -> str:
    from tabulate import tabulate

    depth = f"{r['layers']} layer(s) per stack" if r["layers"] else "real depth"
    heard = f" + {r['audio_seconds']:g} s of audio" if r.get("audio_seconds") else ""
    return "\n".join([
        f"{r['recipe']} {r['stage']} on {r['family']} ({depth}) on {r['device']}: "
        f"{r['frames']} frames at {r['size']} px{heard}, "
        f"batch {r['batch_size']}, {r['precision']}, "
        f"{r['steps']} timed steps",
        tabulate([[f"{r['samples_per_second']:.3f}", f"{r['tokens_per_second']:.0f}",
                   f"{r['tokens_per_sample']:.0f}",
                   f"{r['peak_memory_gib']:.2f} ({r['peak_memory_kind']})"]],
                 headers=["samples/s", "tokens/s", "tokens/sample", "peak memory GiB"],
                 disable_numparse=True)])
