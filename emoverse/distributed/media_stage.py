"""The media stage on Ray Data: manifest rows in, fixed-shape face clips out, cached.

An actor pool (detector loaded once per actor) decodes and crops every clip; rows keep
their manifest fields the model needs plus `frames`, `face_found`, `ok` and `error`, and
with `media.audio` the span's audio (`audio`, `audio_samples`, `audio_error`).
Output is Parquet under a key of (manifest content, media parameters, stage version),
so later stages, evaluation and other runs reuse it and a changed parameter never hits
a stale entry. Clips that fail are kept as `ok=False` rows with the reason, counted in
`stats.json`, and never reach training.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from pathlib import Path
from typing import Callable

import numpy as np

from emoverse.atomic_dir import atomic_dir
from emoverse.distributed.session import cluster_resources, driver_dataset
from emoverse.emt.manifest import manifest_hash, read_manifest
from emoverse.media.cache import CLIPS, DONE, ERRORS, PARAMS, cache_stats, write_error_report
from emoverse.media.clips import MediaError, process_clip
from emoverse.media.faces import detector_for
from emoverse.recipe import MediaConfig

MEDIA_VERSION = "media/2"  # 2: PyAV decoding and our MTCNN runner
PASS_THROUGH = ["sample_id", "task", "source", "split", "prompt", "target"]
ROWS_PER_BLOCK = 16  # one actor task; small enough that the last ones finish together
# Clips per cache file. Every later reader (each stage's epoch, each evaluation) starts Ray
# tasks per file: 288 files of 16 clips took 75 s to read into a stage's epoch on 2 cores,
# 9 files of 512 took 17 s.
ROWS_PER_FILE = 512


class ClipProcessor:
    """Ray Data callable class: one detector per actor, a batch of rows per call."""

    def __init__(self, media: dict):
        import cv2

        cv2.setNumThreads(1)  # one actor per CPU already; more threads only contend
        self.cfg = MediaConfig(**media)
        self.detector = detector_for(self.cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["sample_id"])
        shape = (self.cfg.num_frames, self.cfg.size, self.cfg.size, 3)
        frames = np.zeros((n, *shape), np.uint8)
        found, ok, errors = np.zeros(n, bool), np.zeros(n, bool), np.full(n, "", object)
        heard = self.cfg.audio
        if heard:  # fixed-width rows (Arrow tensors), the length beside them
            audio = np.zeros((n, heard.max_samples), np.int16)
            audio_samples = np.zeros(n, np.int32)
            audio_errors = np.full(n, "", object)
        for i in range(n):
            start, end = _span(batch["media_start"][i], batch["media_end"][i])
            peak = batch["peak_frame"][i]
            peak = None if peak is None or np.isnan(peak) else int(peak)
            try:
                clip = process_clip(str(batch["media_path"][i]), self.cfg, self.detector,
                                    start, end, peak)
            except MediaError as exc:
                errors[i] = str(exc)
                continue
            frames[i], found[i], ok[i] = clip.frames, clip.face_found, True
            if heard:
                audio[i, :len(clip.audio)], audio_samples[i] = clip.audio, len(clip.audio)
                audio_errors[i] = clip.audio_error
        out = {k: batch[k] for k in PASS_THROUGH}
        out.update(frames=frames, face_found=found, ok=ok, error=errors,
                   media_path=batch["media_path"])
        if heard:
            out.update(audio=audio, audio_samples=audio_samples, audio_error=audio_errors)
        return out


def _span(start, end) -> tuple[float | None, float | None]:
    if start is None or end is None or math.isnan(start) or math.isnan(end):
        return None, None
    return float(start), float(end)


def cache_key(manifest: str | Path, media: MediaConfig) -> str:
    text = f"{MEDIA_VERSION}|{manifest_hash(manifest)}|{media.settings_json()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def pool_size(cluster: dict[str, float], resources: dict[str, float] | None = None) -> int:
    """Media actors for a cluster's resource totals: one per CPU, or as many as the nodes
    offering the custom `resources` hold. None of those nodes up yet (an autoscaling
    group at zero) still gives one actor, whose request makes the autoscaler add a node."""
    if not resources:
        return max(1, int(cluster.get("CPU", 1)))
    return max(1, min(int(cluster.get(name, 0) // amount) for name, amount in resources.items()))


def _write_watched(ds, path: Path, clips: int,
                   progress: Callable[[int, int], None] | None) -> None:
    """`ds.write_parquet(path)` in files of `ROWS_PER_FILE` clips, calling `progress` with
    (clips written, clips) every second."""
    def write():
        ds.write_parquet(str(path), min_rows_per_file=ROWS_PER_FILE)

    if progress is None:
        write()
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="media-write") as pool:
        done = pool.submit(write)
        while True:
            try:
                done.result(timeout=1.0)
                break
            except TimeoutError:
                progress(min(clips - 1, _rows_written(path)), clips)
    progress(clips, clips)


def _rows_written(path: Path) -> int:
    """Rows in the finished Parquet files under `path` (a file being written has no footer
    yet and counts as none)."""
    import pyarrow.parquet as pq

    rows = 0
    for f in path.glob("*.parquet"):
        try:
            rows += pq.ParquetFile(f).metadata.num_rows
        except (OSError, ValueError):
            pass
    return rows


def run_media_stage(manifest: str | Path, media: MediaConfig, cache_root: str | Path,
                    num_actors: int | None = None, processor: type = ClipProcessor,
                    resources: dict[str, float] | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    ordered: bool = False) -> Path:
    """Process every clip of `manifest` once (or reuse the cache) and return its directory.

    `resources` are custom Ray resources each actor requests, to keep the stage on a node
    group (`scaling.media_resources`); they are not part of the cache key. `progress` is
    called with (clips written, clips) while the stage runs. `ordered`: the cache's files
    hold the clips in manifest order (a deterministic recipe's streamed epochs read blocks
    as they lie), at the cost of an actor's finished batches waiting for earlier ones."""
    import ray

    table = read_manifest(manifest)  # validate before spending any compute
    out = Path(cache_root) / cache_key(manifest, media)
    if (out / DONE).is_file():
        return out
    actors = num_actors or pool_size(cluster_resources(), resources)
    columns = PASS_THROUGH + ["media_path", "media_start", "media_end", "peak_frame"]
    # The manifest is small metadata, already read to validate it: its slices go to Ray
    # Data as they are. Reading it with read_parquet added list, read and repartition
    # tasks of 1 CPU each, which on 2 cores waited behind the actors for 10-20 s.
    table = table.select(columns)
    ds = driver_dataset([table.slice(i, ROWS_PER_BLOCK)
                         for i in range(0, max(1, table.num_rows), ROWS_PER_BLOCK)])
    # One actor per CPU from the start (an autoscaling pool stayed at one actor here),
    # each reserving half a CPU so the write tasks can still be scheduled.
    # Actors that die are restarted and their batches retried: Ray Data's own defaults
    # for actor pools (max_restarts=-1, max_task_retries=-1), tested in test_media_stage.
    ds = ds.map_batches(processor, fn_constructor_kwargs={"media": media.model_dump()},
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        batch_size=ROWS_PER_BLOCK, batch_format="numpy", num_cpus=0.5,
                        resources=dict(resources or {}))
    # map_batches gave the dataset a context of its own: this changes no other dataset
    ds.context.execution_options.preserve_order = ordered
    with atomic_dir(out) as tmp:
        _write_watched(ds, tmp / CLIPS, table.num_rows, progress)
        (tmp / PARAMS).write_text(media.model_dump_json(indent=2))
        stats = cache_stats(tmp / CLIPS)
        write_error_report(stats["errors"], tmp / ERRORS)
        (tmp / DONE).write_text(json.dumps(stats, indent=2))
    return out
