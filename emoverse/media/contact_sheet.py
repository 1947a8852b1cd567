"""A contact sheet: what the model will see, one row of frames per sampled clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FALLBACK = (220, 40, 40)  # red border: no face found, centre crop used


def contact_sheet(clips: list[dict], scale: int = 2) -> np.ndarray:
    """An RGB image: each clip's frames side by side, clips stacked, fallbacks framed red."""
    if not clips:
        raise ValueError("no clips to show")
    rows = []
    for clip in clips:
        strip = np.concatenate(list(clip["frames"]), axis=1).copy()
        if not clip["face_found"]:
            strip[:2], strip[-2:], strip[:, :2], strip[:, -2:] = (FALLBACK,) * 4
        rows.append(np.pad(strip, ((1, 1), (0, 0), (0, 0)), constant_values=255))
    sheet = np.concatenate(rows, axis=0)
    return np.kron(sheet, np.ones((scale, scale, 1), np.uint8))


def write_png(image: np.ndarray, path: str | Path) -> Path:
    import cv2

    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
