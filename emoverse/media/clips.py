"""Decode a clip, sample its frames, and crop the face: one clip in, fixed-shape frames out.

Uniform sampling takes the centre frame of N equal segments (of the whole file, or of
the start/end span of an episode). Decoding (PyAV) seeks to the keyframe before the first
of those frames, decodes forward, and converts only the sampled frames to RGB, at reduced
resolution when the source is larger than `max_decode_side` (about twice as fast as
decord's random access on corpus-like clips; README: media stage). When no frame
of a clip has a face, the documented fallback is the centre square of the frame.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from emoverse.media.faces import FaceDetector, choose_face, detect_many_scaled, smooth_boxes
from emoverse.recipe import MediaConfig


class MediaError(ValueError):
    """A clip that cannot be turned into frames; the message says why."""


@dataclass
class Clip:
    frames: np.ndarray  # (num_frames, size, size, 3) uint8
    times: np.ndarray  # seconds of each sampled frame
    boxes: np.ndarray  # (num_frames, 4) face box per frame, in source pixels
    face_found: bool  # False when the centre-crop fallback was used
    audio: np.ndarray | None = None  # int16 mono samples of the span (media.audio)
    audio_error: str = ""  # why the audio is silence (media.audio.missing: silence)


def sample_indices(num_frames_total: int, fps: float, n: int,
                   start: float | None = None, end: float | None = None,
                   peak: int | None = None) -> np.ndarray:
    """Centre frame index of each of `n` equal segments of the clip or of [start, end).

    With a `peak` frame (OpenFace's peak expression, counted from the span's start) the
    segment containing it samples the peak instead of its centre.
    """
    first, last = 0, num_frames_total
    if start is not None and end is not None:
        first, last = int(np.floor(start * fps)), int(np.ceil(end * fps))
        if first >= num_frames_total or last <= first:
            raise MediaError(f"time span {start:.3f}-{end:.3f}s lies outside the video "
                             f"({num_frames_total / fps:.3f}s)")
        last = min(last, num_frames_total)
    span = last - first
    if span <= 0:
        raise MediaError("the video has no frames")
    edges = np.linspace(first, last, n + 1)
    idx = np.minimum(((edges[:-1] + edges[1:]) / 2).astype(int), last - 1)
    if peak is not None and 0 <= first + peak < last:
        idx[min(n - 1, int(np.searchsorted(edges, first + peak, side="right")) - 1)] = first + peak
    return idx


def decode_frames(path: str, n: int, start: float | None = None, end: float | None = None,
                  max_side: int = 480, peak: int | None = None,
                  max_source_side: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """`n` uniformly sampled RGB frames of `path` and their times in seconds."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("the file has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # one process per CPU already
            w, h = stream.codec_context.width, stream.codec_context.height
            if max(h, w) > max_source_side:
                raise MediaError(f"resolution {w}x{h} is over the {max_source_side}px limit")
            size = (w, h)
            if max(h, w) > max_side:  # convert straight to a smaller size
                scale = max_side / max(h, w)
                size = (int(w * scale) // 2 * 2, int(h * scale) // 2 * 2)
            fps = float(stream.average_rate or 0) or 25.0
            total = stream.frames or _count_frames(container, stream)
            if total == 0:
                raise MediaError("the video has no frames")
            idx = sample_indices(total, fps, n, start, end, peak)
            frames = _decode_at(container, stream, idx, fps, size)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"cannot decode video: {exc}".splitlines()[0]) from exc
    return frames, idx / fps


def _count_frames(container, stream) -> int:
    """Frames of a stream whose header does not say (some containers): count the packets."""
    count = sum(1 for packet in container.demux(stream) if packet.size)
    container.seek(0)
    return count


def _decode_at(container, stream, idx: np.ndarray, fps: float, size: tuple[int, int]
               ) -> np.ndarray:
    """The frames at indices `idx` (sorted, repeats allowed), decoding in one forward pass
    from the keyframe before the first and converting only those to RGB: a clip's other
    frames must be decoded anyway (they are references), but colour conversion is skipped.
    An index is a frame's presentation time times `fps`, counted from the stream's start."""
    tb = float(stream.time_base)
    origin = stream.start_time or 0
    first_s = idx[0] / fps
    if first_s > 1.0:  # an episode span: skip to the keyframe before it
        container.seek(origin + int(first_s / tb), stream=stream, backward=True)
    wanted, out, position = list(idx), [], -1
    for frame in container.decode(stream):
        position = (round((frame.pts - origin) * tb * fps) if frame.pts is not None
                    else position + 1)
        while wanted and wanted[0] <= position:  # a missing index takes the next frame
            out.append(frame.to_ndarray(format="rgb24", width=size[0], height=size[1]))
            wanted.pop(0)
        if not wanted:
            break
    if wanted:
        if not out:
            raise MediaError("the video has no frames")
        out += [out[-1]] * len(wanted)  # the header counted frames the stream lacks
    return np.stack(out)


def crop_square(frame: np.ndarray, box: np.ndarray, margin: float, size: int) -> np.ndarray:
    """The square around `box` grown by `margin`, padded at the frame edges, resized."""
    import cv2

    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * (1.0 + margin)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    s = max(1, int(round(side)))
    frame_h, frame_w = frame.shape[:2]
    # Pad the part of the square inside the frame, not the whole frame (a copy of the
    # frame grown by the square's side on each edge cost more than the crop itself).
    ix0, iy0 = min(max(x0, 0), frame_w - 1), min(max(y0, 0), frame_h - 1)
    ix1, iy1 = max(min(x0 + s, frame_w), ix0 + 1), max(min(y0 + s, frame_h), iy0 + 1)
    crop = cv2.copyMakeBorder(frame[iy0:iy1, ix0:ix1], max(0, iy0 - y0), max(0, y0 + s - iy1),
                              max(0, ix0 - x0), max(0, x0 + s - ix1), cv2.BORDER_REPLICATE)
    crop = crop[:s, :s]  # a square wholly off the frame pads beyond it, all edge pixels
    interp = cv2.INTER_AREA if s > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def centre_box(shape: tuple[int, ...]) -> np.ndarray:
    h, w = shape[:2]
    side = min(h, w)
    return np.array([(w - side) / 2, (h - side) / 2, side, side], np.float32)


def detection_frames(n: int, k: int | None) -> list[int]:
    """Indices of the `k` frames of `n` to detect on: evenly spread, first and last included."""
    if k is None or k >= n:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def process_clip(path: str, cfg: MediaConfig, detector: FaceDetector,
                 start: float | None = None, end: float | None = None,
                 peak: int | None = None) -> Clip:
    """Decode, sample, detect, smooth and crop one clip."""
    if not os.path.isfile(path):
        raise MediaError("no such file")
    if os.path.getsize(path) == 0:
        raise MediaError("empty (zero-byte) file")
    frames, times = decode_frames(path, cfg.num_frames, start, end, cfg.max_decode_side,
                                  peak if cfg.use_peak_frame else None, cfg.max_source_side)
    found = [None] * len(frames)
    picked = detection_frames(len(frames), cfg.detect_frames)
    for i, boxes in zip(picked, detect_many_scaled(detector, frames[picked], cfg.detect_side)):
        found[i] = choose_face(boxes, frames[i].shape)
    boxes = smooth_boxes(found)
    face_found = boxes is not None
    if boxes is None:
        boxes = [centre_box(frames[0].shape)] * len(frames)
        margin = 0.0
    else:
        margin = cfg.margin
    crops = np.stack([crop_square(f, b, margin, cfg.size) for f, b in zip(frames, boxes)])
    clip = Clip(frames=crops, times=times.astype(np.float32),
                boxes=np.stack(boxes).astype(np.float32), face_found=face_found)
    if cfg.audio is not None:
        clip.audio, clip.audio_error = clip_audio(path, cfg, start, end)
    return clip


def clip_audio(path: str, cfg: MediaConfig, start: float | None,
               end: float | None) -> tuple[np.ndarray, str]:
    """The span's audio and "" or, where the recipe allows, silence and why."""
    from emoverse.media.audio import decode_audio, silence

    try:
        return decode_audio(path, cfg.audio, start, end), ""
    except MediaError as exc:
        if cfg.audio.missing != "silence":
            raise MediaError(f"audio: {exc} (media.audio.missing=silence would use "
                             "silence)") from exc
        return silence(path, cfg.audio, start, end), str(exc)
