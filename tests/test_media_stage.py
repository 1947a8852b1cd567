"""The media stage on Ray Data: bad files are reported and counted, good clips all arrive."""

import csv
import json
import shutil

import numpy as np
import pytest

from emoverse.emt.demo_clips import write_mp4
from emoverse.emt.manifest import write_manifest
from emoverse.recipe import MediaConfig

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ray_session():
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def row(sample_id, path, **over):
    base = dict(sample_id=sample_id, task="msa", source="t", split="train", media_path=str(path),
                transcript="I love it", prompt="p", target="Positive.", label_class="positive")
    base.update(over)
    return base


def write_audio_only(path):
    """An mp4 whose only stream is audio: no video frames at all."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def bad_inputs(tmp_path, demo_set):
    import pyarrow.parquet as pq

    demo = pq.read_table(demo_set).to_pylist()[:6]
    good = [row(f"good{i}", r["media_path"], peak_frame=i % 8) for i, r in enumerate(demo)]
    (tmp_path / "zero.mp4").touch()
    (tmp_path / "text.mp4").write_text("not a video at all")
    data = open(demo[0]["media_path"], "rb").read()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    write_mp4(np.zeros((2, 64, 4200, 3), np.uint8), str(tmp_path / "huge.mp4"))
    write_audio_only(tmp_path / "audio.mp4")
    bad = [row("missing", tmp_path / "missing.mp4"), row("zero", tmp_path / "zero.mp4"),
           row("text", tmp_path / "text.mp4"), row("truncated", tmp_path / "truncated.mp4"),
           row("huge", tmp_path / "huge.mp4"), row("audio", tmp_path / "audio.mp4"),
           row("late-span", demo[1]["media_path"], media_start=30.0, media_end=31.0)]
    return write_manifest(good + bad, tmp_path / "manifest.parquet"), len(good), len(bad)


def test_bad_clips_are_reported_and_good_ones_all_arrive(tmp_path, demo_set, ray_session):
    from emoverse.distributed.media_stage import ERRORS, run_media_stage
    from emoverse.media.cache import clip_files

    manifest, n_good, n_bad = bad_inputs(tmp_path, demo_set)
    cfg = MediaConfig(num_frames=4, size=32)
    progress = []
    out = run_media_stage(manifest, cfg, tmp_path / "cache",
                          progress=lambda done, total: progress.append((done, total)))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["clips"] == n_good + n_bad and stats["ok"] == n_good
    assert progress[-1] == (stats["clips"], stats["clips"])  # the stage's own progress line
    assert stats["failed"] == n_bad
    with open(out / ERRORS) as f:
        report = {r["sample_id"]: r for r in csv.DictReader(f)}
    assert set(report) == {"missing", "zero", "text", "truncated", "huge", "audio", "late-span"}
    assert report["audio"]["error"] == "the file has no video stream"
    assert report["missing"]["error"] == "no such file"
    assert report["zero"]["error"] == "empty (zero-byte) file"
    assert "cannot decode" in report["text"]["error"]
    assert "over the 4096px limit" in report["huge"]["error"]
    assert "outside the video" in report["late-span"]["error"]
    assert report["truncated"]["media_path"].endswith("truncated.mp4")
    import pyarrow.parquet as pq

    t = pq.read_table(clip_files(out), columns=["sample_id", "ok"]).to_pandas()
    assert sorted(t[t.ok].sample_id) == [f"good{i}" for i in range(n_good)]
    from emoverse.cli import main

    assert main(["media", "inspect", str(out), "--count", "4"]) == 0
    assert (out / "contact_sheet.png").stat().st_size > 0
    # a second run is a cache hit; a changed parameter is a new key
    assert run_media_stage(manifest, cfg, tmp_path / "cache") == out
    other = run_media_stage(manifest, MediaConfig(num_frames=4, size=48), tmp_path / "cache")
    assert other != out


def test_a_dying_actor_is_replaced_and_its_clips_retried(tmp_path, demo_set, ray_session):
    import pyarrow.parquet as pq

    from emoverse.distributed import media_stage

    marker = tmp_path / "died-once"

    class CrashOnce(media_stage.ClipProcessor):
        def __call__(self, batch):
            if not marker.exists():
                marker.touch()
                import os

                os._exit(1)
            return super().__call__(batch)

    rows = pq.read_table(demo_set).to_pylist()
    manifest = write_manifest(rows, tmp_path / "m.parquet")
    out = media_stage.run_media_stage(manifest, MediaConfig(num_frames=4, size=32),
                                      tmp_path / "cache", processor=CrashOnce)
    stats = json.loads((out / "stats.json").read_text())
    assert marker.exists() and stats["ok"] == len(rows) and stats["failed"] == 0
    shutil.rmtree(out)
