"""Decode a clip's audio track: mono, resampled, cut to the span its frames were sampled
from, as 16-bit samples (what the media cache keeps; the model's feature extractor takes
them as floats in [-1, 1]).

A span longer than `AudioConfig.max_seconds` keeps its middle part, where the frames'
middle segments lie. A clip with no audio track, or one that cannot be decoded, is a
`MediaError`; the media stage turns it into silence where the recipe allows
(`media.audio.missing: silence`).
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np

from emoverse.media.clips import MediaError
from emoverse.recipe import AudioConfig

SEEK_AFTER_S = 1.0  # a span starting later than this seeks instead of decoding from 0


def decode_audio(path: str | BinaryIO, cfg: AudioConfig, start: float | None = None,
                 end: float | None = None, format: str | None = None) -> np.ndarray:
    """The audio of `path` (a file, or a file object of the container `format`, such as
    "wav" or "mp3"), of [start, end) seconds when given, as int16 mono samples at
    `cfg.sample_rate`, at most `cfg.max_samples` of them."""
    import av

    try:
        with av.open(path, format=format) as container:
            if not container.streams.audio:
                raise MediaError("the file has no audio track")
            stream = container.streams.audio[0]
            stream.thread_type = "NONE"
            samples, first = _decode_span(container, stream, cfg.sample_rate, start, end)
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as exc:
        raise MediaError(f"cannot decode audio: {exc}".splitlines()[0]) from exc
    lo = 0 if start is None else max(0, int(round((start - first) * cfg.sample_rate)))
    hi = len(samples) if end is None else int(round((end - first) * cfg.sample_rate))
    cut = samples[lo:max(lo, hi)]
    if len(cut) == 0:
        raise MediaError("the audio track has no samples in the clip's span")
    return middle(cut, cfg.max_samples)


def _decode_span(container, stream, rate: int, start: float | None,
                 end: float | None) -> tuple[np.ndarray, float]:
    """Resampled samples from the frame at or before `start` to the first past `end`, and
    the time in seconds of the first one."""
    import av

    origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
    if start is not None and start > SEEK_AFTER_S:
        container.seek(int((origin + start) / stream.time_base), stream=stream, backward=True)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
    chunks, first = [], None
    for frame in container.decode(stream):
        if first is None:
            first = (float(frame.pts * frame.time_base) - origin) if frame.pts is not None \
                else 0.0
        for out in resampler.resample(frame):
            chunks.append(out.to_ndarray().reshape(-1))
        if end is not None and frame.pts is not None and \
                float(frame.pts * frame.time_base) - origin > end:
            break
    for out in resampler.resample(None):  # what the resampler still holds
        chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise MediaError("the audio track has no samples")
    return np.concatenate(chunks).astype(np.int16), first or 0.0


def middle(samples: np.ndarray, count: int) -> np.ndarray:
    """The middle `count` samples (all of them when there are fewer)."""
    if len(samples) <= count:
        return samples
    lo = (len(samples) - count) // 2
    return samples[lo:lo + count]


def span_seconds(path: str, start: float | None, end: float | None) -> float:
    """How long the clip's span lasts: `end - start`, or the file's duration."""
    if start is not None and end is not None:
        return max(0.0, end - start)
    import av

    try:
        with av.open(path) as container:
            return (container.duration or 0) / 1e6
    except (av.FFmpegError, OSError):
        return 0.0


def silence(path: str, cfg: AudioConfig, start: float | None, end: float | None) -> np.ndarray:
    """Silence as long as the clip's span (at most `cfg.max_samples`; one sample at least)."""
    count = int(round(span_seconds(path, start, end) * cfg.sample_rate))
    return np.zeros(min(cfg.max_samples, max(1, count)), np.int16)


def as_float(samples: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in [-1, 1], what feature extractors take."""
    return np.asarray(samples, np.float32) / 32768.0
