"""Served videos: uploads and paths under the media root, their limits, and their clips.

Clips are made by the media stage's own code (`emoverse.media.clips.process_clip`) with
the run's media config, so a served clip is decoded, sampled, face-cropped and resized
exactly as in training, and its audio decoded and cut as in training when the run's
recipe has `media.audio`. Processed clips are kept in a small LRU (keyed by content hash
for uploads, by path, size and mtime for stored files): clients often ask several
tasks about one clip. Every refusal is a `ServingError` naming the input.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from emoverse.media.clips import MediaError, process_clip
from emoverse.media.faces import detector_for
from emoverse.recipe import MediaConfig
from emoverse.serving.config import Limits
from emoverse.serving.errors import ServingError

CHUNK = 1 << 20
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


@dataclass(frozen=True)
class VideoRef:
    """A video to analyse: a readable local file, the field it came from, a cache key."""

    path: str
    field: str
    key: str
    start: float | None = None  # seconds: analyse only this span of the file
    end: float | None = None


@dataclass(frozen=True)
class ServedClip:
    frames: np.ndarray
    face_found: bool
    cached: bool
    audio: np.ndarray | None = None  # the span's int16 samples, when media.audio is set


class VideoSource:
    def __init__(self, media: MediaConfig, limits: Limits, media_root: str | None = None):
        self.media = media
        self.limits = limits
        self.root = Path(os.path.realpath(media_root)) if media_root else None
        self._detector = detector_for(media)
        self._detect_lock = threading.Lock()  # one OpenCV detector, not re-entrant
        self._cache: OrderedDict[str, ServedClip] = OrderedDict()
        self._cache_lock = threading.Lock()

    def stored(self, raw: str, field: str = "video_path", start: float | None = None,
               end: float | None = None) -> VideoRef:
        """A file under the media root; `..` and symlinks are resolved before the check."""
        if self.root is None:
            raise ServingError(400, field, "serving videos by path is off (no media_root "
                               "configured); upload the video instead")
        if not raw or "\x00" in raw:
            raise ServingError(400, field, "empty or malformed path")
        resolved = Path(os.path.realpath(self.root / raw))
        if resolved != self.root and self.root not in resolved.parents:
            raise ServingError(403, field, f"{raw!r} lies outside the media root")
        if not resolved.is_file():
            raise ServingError(404, field, f"no video at {raw!r} under the media root")
        stat = resolved.stat()
        return VideoRef(str(resolved), field, f"path:{resolved}:{stat.st_size}:"
                        f"{stat.st_mtime_ns}:{start}:{end}", start, end)

    def listed(self, most: int, containing: str = "") -> tuple[list[dict], bool]:
        """Up to `most` videos under the media root whose path contains `containing`
        ({path, size}, sorted), and whether there were more."""
        if self.root is None:
            raise ServingError(400, "media_root", "no media root configured: the server "
                               "takes uploads only")
        found = []
        for path in sorted(self.root.rglob("*")):
            relative = str(path.relative_to(self.root))
            if path.suffix.lower() not in VIDEO_SUFFIXES or containing.lower() not in \
                    relative.lower():
                continue
            real = Path(os.path.realpath(path))
            if real.is_file() and self.root in real.parents:
                if len(found) == most:
                    return found, True
                found.append({"path": relative, "size": real.stat().st_size})
        return found, False

    @contextmanager
    def uploaded(self, stream: BinaryIO, content_type: str | None, filename: str | None,
                 field: str = "video", start: float | None = None,
                 end: float | None = None) -> Iterator[VideoRef]:
        """The upload copied to a temporary file (removed afterwards), size-checked."""
        kind = (content_type or "").split(";")[0].strip().lower()
        if kind and not (kind.startswith("video/") or kind == "application/octet-stream"):
            raise ServingError(415, field, f"content type {kind!r} is not a video")
        suffix = Path(filename or "").suffix[:8] or ".mp4"
        with tempfile.TemporaryDirectory(prefix="emoverse-upload-") as tmp:
            path = os.path.join(tmp, f"upload{suffix}")
            digest = self._copy_limited(stream, path, field)
            yield VideoRef(path, field, f"sha256:{digest}:{start}:{end}", start, end)

    def _copy_limited(self, stream: BinaryIO, path: str, field: str) -> str:
        limit = self.limits.max_upload_bytes
        digest, size = hashlib.sha256(), 0
        with open(path, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise ServingError(413, field, f"upload is over the "
                                       f"{self.limits.max_upload_mb:g} MiB limit")
                digest.update(chunk)
                out.write(chunk)
        if size == 0:
            raise ServingError(415, field, "empty upload (zero bytes), not a video")
        return digest.hexdigest()

    def clip(self, video: VideoRef) -> ServedClip:
        """The processed clip of `video` (checked against the limits first)."""
        key = f"{video.key}:{self.media.key()}"
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return ServedClip(hit.frames, hit.face_found, cached=True, audio=hit.audio)
        self.check(video)
        try:
            with self._detect_lock:
                clip = process_clip(video.path, self.media, self._detector, video.start, video.end)
        except MediaError as exc:
            raise ServingError(422, video.field, f"cannot use the video: {exc}") from exc
        served = ServedClip(clip.frames, clip.face_found, cached=False, audio=clip.audio)
        self._remember(key, served)
        return served

    def check(self, video: VideoRef) -> None:
        """Refuse non-videos and videos over the duration or frame limits."""
        frames, fps = probe(video.path, video.field)
        limits = self.limits
        if frames > limits.max_video_frames:
            raise ServingError(413, video.field, f"{frames} frames, over the "
                               f"{limits.max_video_frames}-frame limit")
        span = frames / fps
        if video.start is not None and video.end is not None:
            if not 0 <= video.start < video.end:
                raise ServingError(422, video.field, f"span {video.start}-{video.end}s is "
                                   "not a forward range from 0")
            span = min(video.end, span) - video.start
        if span > limits.max_video_seconds:
            raise ServingError(413, video.field, f"{span:.1f}s long, over the "
                               f"{limits.max_video_seconds:g}s limit")

    def _remember(self, key: str, clip: ServedClip) -> None:
        if self.limits.media_cache_clips == 0:
            return
        with self._cache_lock:
            self._cache[key] = clip
            while len(self._cache) > self.limits.media_cache_clips:
                self._cache.popitem(last=False)


def probe(path: str, field: str) -> tuple[int, float]:
    """(frame count, fps) of a video file; a 415 when it is not a decodable video."""
    import decord

    try:
        reader = decord.VideoReader(path, num_threads=1)
        frames, fps = len(reader), float(reader.get_avg_fps()) or 25.0
    except Exception as exc:  # decord raises bare errors on anything it cannot demux
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ServingError(415, field, f"not a decodable video ({first})") from exc
    if frames == 0:
        raise ServingError(415, field, "the video has no frames")
    return frames, fps
