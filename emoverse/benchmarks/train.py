"""`emoverse bench train [--samples N] [--epochs E] [--batch-size B] [--stream]`

The tiny recipe's stage 1 (its model, mixture, batch size, epochs and media) trained on
the same clips by the same stage code (`emoverse.train.stage.train`) (a) in one plain
process over rows held in memory, using every CPU through torch's threads, and as
`emoverse train` runs it: Ray Train (2 DDP workers) fed by Ray Data from the media
stage's cache, the epoch kept in the object store when it fits (as the stage does) or,
with `--stream`, re-read every epoch, (b) not deterministic (Ray Train splits the epoch
among the workers as they ask) and (c) deterministic (the recipe setting: each worker
its own seeded share, torch's deterministic algorithms, a seed per batch). Prints
samples/s of each loop, the ratios b/a and c/b, and the share of the workers' step time
spent waiting for data, overall and once warm (each epoch's first batch excluded).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from emoverse.console import logger
from emoverse.emt.demo import build_demo
from emoverse.media.cache import clip_files
from emoverse.recipe import MediaConfig, ScalingConfig, StageConfig, load_recipe

log = logger(__name__)

COLUMNS = ["sample_id", "prompt", "target", "frames"]


def bench_stage(samples: int, epochs: int, batch_size: int) -> StageConfig:
    """Stage 1 of the tiny recipe with `epochs` epochs of `samples` samples."""
    stage = load_recipe("m2se-tiny").stages[0]
    return stage.model_copy(update={"epochs": epochs, "epoch_size": samples,
                                    "batch_size": batch_size, "log_every": 100})


def plain_loop(stage: StageConfig, cache: Path, model_dir: str, threads: int,
               storage: Path) -> dict:
    """(a): the same stage (`emoverse.train.stage.train`) in one process without Ray: rows
    in memory, reshuffled each epoch, `threads` torch threads."""
    from emoverse.distributed.stage_trainer import plan_epoch
    from emoverse.train.stage import LocalSession, StageJob, train

    multiplicity, _ = plan_epoch(cache, stage)
    table = pq.read_table(clip_files(cache), columns=COLUMNS).to_pandas()
    table = table[table.sample_id.isin(multiplicity)]
    rows = table[["prompt", "target", "frames"]].to_dict("records")
    rows = [row for row, sample in zip(rows, table.sample_id) for _ in range(multiplicity[sample])]
    steps = len(rows) // stage.batch_size * stage.epochs
    state = train(StageJob(stage=stage, init_from=model_dir, total_steps=steps,
                           torch_threads=threads), LocalSession(rows, storage, stage.seed))
    return {"samples_per_second": state.samples_per_second,
            "data_wait_fraction": state.data_wait_fraction, "steps": state.step}


def run(samples: int = 4000, epochs: int = 6, batch_size: int = 16, stream: bool = False,
        workdir: str | None = None) -> dict:
    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.session import ensure_ray
    from emoverse.distributed.stage_trainer import fit_stage, fits_in_object_store
    from emoverse.model.checkpoint import read_lineage
    from emoverse.model.tiny import write_tiny_model
    from emoverse.model.vocabulary import instruction_corpus

    work = Path(workdir or tempfile.mkdtemp(prefix="emoverse-bench-train-"))
    recipe = load_recipe("m2se-tiny")
    stage = bench_stage(samples, epochs, batch_size)
    log.info(f"writing the tiny model and a demo set under {work}")
    model_dir = str(write_tiny_model(work / "model", instruction_corpus()))
    manifest = build_demo(work / "data", size=1200, seed=3)
    ensure_ray()
    cache = run_media_stage(manifest, MediaConfig(**recipe.media.model_dump()), work / "cache")
    threads = os.cpu_count() or 1
    log.info(f"(a) the stage without Ray, one process, {threads} threads")
    plain = plain_loop(stage, cache, model_dir, threads, work / "plain")
    kept = not stream and fits_in_object_store(cache, samples)
    mode = "epoch kept in the object store" if kept else "streamed from the cache every epoch"
    result = {"batch_size": batch_size, "epochs": epochs, "mode": mode,
              "plain_samples_per_second": plain["samples_per_second"]}
    for key, deterministic in (("ray", False), ("deterministic", True)):
        log.info(f"({'c' if deterministic else 'b'}) Ray Train, {recipe.scaling.num_workers} "
                 f"workers, Ray Data: {mode}, deterministic {deterministic}")
        start = time.perf_counter()
        checkpoint, _ = fit_stage(stage, cache, model_dir, work / key, ScalingConfig(),
                                  {"parent": model_dir}, materialize=kept,
                                  deterministic=deterministic)
        lineage = read_lineage(checkpoint)
        result.update({"samples": lineage["step"] * batch_size,
                       f"{key}_samples_per_second": lineage["samples_per_second"],
                       f"{key}_wall_seconds": time.perf_counter() - start,
                       f"{key}_data_wait_fraction": lineage["data_wait_fraction"],
                       f"{key}_warm_data_wait_fraction": lineage["warm_data_wait_fraction"]})
    result["b_over_a"] = result["ray_samples_per_second"] / result["plain_samples_per_second"]
    result["c_over_b"] = (result["deterministic_samples_per_second"]
                          / result["ray_samples_per_second"])
    return result


def report(r: dict) -> str:
    from tabulate import tabulate

    def ray_row(label: str, key: str) -> list[str]:
        return [label, f"{r[f'{key}_samples_per_second']:.1f}",
                f"{r[f'{key}_data_wait_fraction']:.1%} ({r[f'{key}_warm_data_wait_fraction']:.1%} "
                f"once warm)", f"{r[f'{key}_wall_seconds']:.0f}s with Ray Train start-up"]

    rows = [["(a) the stage without Ray, one process", f"{r['plain_samples_per_second']:.1f}",
             "", ""],
            ray_row("(b) Ray Train + Ray Data", "ray"),
            ray_row("(c) the same, deterministic", "deterministic")]
    return "\n".join([
        f"{r['samples']} samples in {r['epochs']} epochs, global batch {r['batch_size']}; "
        f"Ray Data: {r['mode']}",
        tabulate(rows, headers=["loop", "samples/s", "data wait of step time", "stage wall time"],
                 disable_numparse=True),
        f"b/a = {r['b_over_a']:.2f} (Ray's cost), c/b = {r['c_over_b']:.2f} "
        "(determinism's cost)",
    ])
