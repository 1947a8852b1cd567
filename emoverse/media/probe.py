"""How long a clip really is, read from its container, and when that contradicts its stamps.

Corpora ship clips cut from episodes, and some cuts went wrong: MELD's tracker lists clips
minutes long whose transcript's stamps span two seconds (test dia220_utt0, dia38_utt4). Such
a clip is kept (the published test sets include it) and reported. The rule, in README:
a clip disagrees grossly with its stamps when the two durations differ by more than
`MIN_GAP_S` seconds and by more than `MIN_RATIO` times.
"""

from __future__ import annotations

MIN_GAP_S = 10.0
MIN_RATIO = 3.0


def clip_duration(path: str) -> float | None:
    """Seconds, from the container's header (no decoding); None when it cannot be read.

    An unreadable clip is not this check's business: the media stage reports it."""
    import av

    try:
        with av.open(path) as container:
            if container.duration:
                return container.duration / 1_000_000  # in AV_TIME_BASE units
            stream = next(iter(container.streams.video), None)
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except (av.FFmpegError, OSError, ValueError):
        return None
    return None


def disagrees(clip_s: float, stamp_s: float) -> bool:
    """Whether a clip's duration and its stamps' span are grossly different (module doc)."""
    longer, shorter = max(clip_s, stamp_s), max(min(clip_s, stamp_s), 1e-3)
    return longer - shorter > MIN_GAP_S and longer / shorter > MIN_RATIO


def stamp_notice(path: str, stamp_s: float) -> str | None:
    """The reason to report a clip whose duration contradicts its stamps, or None."""
    clip_s = clip_duration(path)
    if clip_s is None or not disagrees(clip_s, stamp_s):
        return None
    return (f"clip is {clip_s:.1f} s long but its time stamps span {stamp_s:.1f} s "
            "(mis-cut?); kept")
