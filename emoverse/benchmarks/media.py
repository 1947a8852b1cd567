"""`emoverse bench media [--clips N] [--scale K] [--frames F] [--side PX] [--detector D]`

On the same generated clips (by default 48 frames at 360x360, closer to corpus clips than
the quickstart's), in one run: (a) a naive single-process loop that decodes every frame,
samples, detects at full resolution, crops and resizes (the way public M2SE preprocessing
works), (b) the Ray Data media stage on all CPUs, (c) decoding the sampled frames alone in
one process (the floor). Throughput is compared on K x N clips; (b) also runs on N clips,
and the peak resident memory of the Ray processes on both sizes shows streaming keeps it
flat.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from emoverse.console import logger
from emoverse.emt.demo import build_demo
from emoverse.media.clips import centre_box, crop_square, decode_frames, sample_indices
from emoverse.media.faces import choose_face, make_detector, smooth_boxes
from emoverse.recipe import MediaConfig

log = logger(__name__)


def naive_clip(path: str, cfg: MediaConfig, detector) -> np.ndarray:
    """Decode the whole clip, then sample, detect, crop and resize."""
    import decord

    reader = decord.VideoReader(path)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    picked = frames[sample_indices(len(frames), reader.get_avg_fps(), cfg.num_frames)]
    boxes = smooth_boxes([choose_face(detector.detect(f), f.shape) for f in picked])
    boxes = boxes or [centre_box(picked[0].shape)] * len(picked)
    return np.stack([crop_square(f, b, cfg.margin, cfg.size) for f, b in zip(picked, boxes)])


class MemoryWatch:
    """Peak summed RSS of this process and every Ray worker process, sampled in a thread."""

    def __init__(self, every: float = 0.1):
        self.every, self.peak, self._stop = every, 0, threading.Event()

    def _total(self) -> int:
        import psutil

        total = 0
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid == psutil.Process().pid or cmd.startswith("ray::"):
                total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
        return total

    def __enter__(self):
        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._total())
                time.sleep(self.every)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(clips: int = 150, scale: int = 5, detector: str = "haar",
        yunet_model: str | None = None, workdir: str | None = None, frames: int = 48,
        side: int = 360, decode_side: int = 480) -> dict:
    from emoverse.distributed.media_stage import run_media_stage
    from emoverse.distributed.session import ensure_ray

    work = Path(workdir or tempfile.mkdtemp(prefix="emoverse-bench-media-"))
    cfg = MediaConfig(num_frames=8, size=112, detector=detector, yunet_model=yunet_model,
                      max_decode_side=decode_side)
    log.info(f"generating {clips} and {clips * scale} demo clips ({frames} frames at "
             f"{side}x{side}) under {work}")
    small = build_demo(work / "small", size=clips, seed=1, frames=frames, side=side)
    large = build_demo(work / "large", size=clips * scale, seed=2, frames=frames, side=side)
    # Throughput is compared on the large set, where Ray's fixed start-up (process and
    # actor creation, a few seconds) weighs as little as it does on a real corpus.
    paths = pq.read_table(large, columns=["media_path"]).column("media_path").to_pylist()
    n_small, n = pq.read_metadata(small).num_rows, len(paths)
    det = make_detector(detector, yunet_model)
    log.info(f"(a) naive loop on {n} clips")
    naive = timed(lambda: [naive_clip(p, cfg, det) for p in paths])
    log.info(f"(c) decoding alone on {n} clips")
    floor = timed(lambda: [decode_frames(p, cfg.num_frames, max_side=decode_side)
                           for p in paths])
    ensure_ray()
    with MemoryWatch() as mem_small:
        piped_small = timed(lambda: run_media_stage(small, cfg, work / "cache"))
    with MemoryWatch() as mem_large:
        piped = timed(lambda: run_media_stage(large, cfg, work / "cache"))
    result = {
        "clips": n, "clips_small": n_small, "detector": detector,
        "naive_clips_per_s": n / naive, "pipeline_clips_per_s": n / piped,
        "decode_clips_per_s": n / floor, "pipeline_small_clips_per_s": n_small / piped_small,
        "peak_rss_small_mb": mem_small.peak / 2**20, "peak_rss_large_mb": mem_large.peak / 2**20,
    }
    result["b_over_a"] = result["pipeline_clips_per_s"] / result["naive_clips_per_s"]
    result["b_over_a_small"] = (result["pipeline_small_clips_per_s"]
                                / result["naive_clips_per_s"])
    result["b_over_c"] = result["pipeline_clips_per_s"] / result["decode_clips_per_s"]
    result["memory_large_over_small"] = mem_large.peak / max(1, mem_small.peak)
    return result


def report(r: dict) -> str:
    from tabulate import tabulate

    rows = [["(a) naive single-process loop", f"{r['naive_clips_per_s']:.1f}", ""],
            ["(b) Ray Data media stage", f"{r['pipeline_clips_per_s']:.1f}",
             f"{r['pipeline_small_clips_per_s']:.1f} on {r['clips_small']} clips, start-up "
             "included"],
            ["(c) decode alone, one process", f"{r['decode_clips_per_s']:.1f}", ""]]
    return "\n".join([
        f"clips: {r['clips']} (and {r['clips_small']} for the memory check), "
        f"detector {r['detector']}",
        tabulate(rows, headers=["", "clips/s", "note"], disable_numparse=True),
        f"b/a = {r['b_over_a']:.2f} ({r['b_over_a_small']:.2f} on {r['clips_small']} clips)"
        f"   b/c = {r['b_over_c']:.2f}",
        f"peak RSS of driver + Ray workers: {r['peak_rss_small_mb']:.0f} MiB on "
        f"{r['clips_small']} clips, {r['peak_rss_large_mb']:.0f} MiB on {r['clips']} "
        f"(ratio {r['memory_large_over_small']:.2f})",
    ])
