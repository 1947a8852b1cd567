"""The corpus defects the official MELD and ECF 2.0 files contain, in fixtures of our own.

Checked once against the official files (README: building EMT): MELD train/dev/test convert
to 9,989 / 1,109 / 2,610 MER rows and ECF 2.0's test file to 3,101 ECPE rows with 2,462 pairs,
none rejected. These fixtures keep the cases that made that hard: a zero-length stamp, both
stamp styles, doubled and unbalanced quotes, CRLF line ends, and mis-cut clips.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from emoverse.cli import main
from emoverse.emt.build import BuildOptions, build, notices_path, rejections_path
from emoverse.emt.demo_clips import write_mp4
from emoverse.emt.sources import ecf, meld
from emoverse.media.probe import clip_duration, disagrees

FIXTURES = Path(__file__).parent / "fixtures"
MELD_CASES = FIXTURES / "meld_corpus_cases_test_sent_emo.csv"
ECF_JSON = Path(__file__).resolve().parents[2] / "shared" / "formats" / \
    "ecf2_subtask2_test.sample.json"


def clip(path: Path, seconds: int, fps: int = 2) -> None:
    write_mp4(np.full((seconds * fps, 16, 16, 3), 128, np.uint8), str(path), fps=fps)


def test_meld_corpus_cases_convert_exactly():
    conv = meld.convert(MELD_CASES, FIXTURES, require_media=False)
    assert not conv.rejections
    mer = {r["sample_id"]: r for r in conv.rows if r["task"] == "mer"}
    assert len(mer) == 7 and sum(r["task"] == "msa" for r in conv.rows) == 6
    text = {k.split("-")[-1]: r["transcript"] for k, r in mer.items()}
    assert text["dia0_utt3"] == '"Whole line quoted, with a comma."'
    assert text["dia0_utt4"] == 'And she said, "Laundry?'  # an unbalanced quote, kept
    assert text["dia0_utt5"] == 'It was a "sale!! "'  # white space collapsed
    assert text["dia1_utt0"] == "A line that breaks."
    assert mer["meld-mer-test-dia0_utt2"]["label_class"] == "surprise"
    assert all(r["media_start"] is None for r in conv.rows)  # MELD clips are never cut
    (notice,) = conv.notices  # the zero-length stamp: reported, the row kept
    assert notice.row == f"{MELD_CASES.name}:4" and notice.field == "EndTime"
    assert notice.reason.startswith("zero-length time stamps (0:12:32,632 to 0:12:32,632)")


def test_the_stamp_rule():
    assert disagrees(187.0, 2.0) and disagrees(1.0, 30.0)
    assert not disagrees(11.0, 2.0)  # 9 s apart: within the gap
    assert not disagrees(40.0, 20.0)  # 20 s apart but only 2x
    assert not disagrees(1.2, 0.0)  # a zero-length stamp alone is not a mis-cut


def test_mis_cut_meld_clips_are_kept_and_reported(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name, seconds in [("dia0_utt0", 2), ("dia0_utt1", 1), ("dia0_utt2", 1),
                          ("dia0_utt3", 1), ("dia0_utt4", 40), ("dia0_utt5", 2),
                          ("dia1_utt0", 2)]:
        clip(clips / f"{name}.mp4", seconds)
    assert clip_duration(str(clips / "dia0_utt4.mp4")) == pytest.approx(40, abs=0.6)
    out = tmp_path / "meld.parquet"
    assert main(["emt", "build", "--source", "meld", "--root", str(FIXTURES), "--input",
                 str(MELD_CASES), "--clips", str(clips), "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "13 samples; 0 input rows rejected" in said and "2 kept with a notice" in said
    report = notices_path(out).read_text()
    assert "dia0_utt4" not in report  # rows are named by file line, as rejections are
    assert f"{MELD_CASES.name}:6,media_path,clip is 40.0 s long but its time stamps span " \
           "2.3 s (mis-cut?); kept" in report
    assert "zero-length" in report
    assert rejections_path(out).read_text().strip() == "source,row,field,reason"


def test_mis_cut_ecf_clip_is_reported_and_an_unreadable_one_left_to_the_media_stage(tmp_path):
    data = json.loads(ECF_JSON.read_text())
    for conv in data:
        for utt in conv["conversation"]:
            clip(tmp_path / utt["video_name"], 1, fps=1)
    long_one = data[0]["conversation"][1]["video_name"]
    clip(tmp_path / long_one, 60, fps=1)
    (tmp_path / data[1]["conversation"][0]["video_name"]).write_bytes(b"not a video")
    conv = ecf.convert(ECF_JSON, tmp_path)
    assert len(conv.rows) == 38 and not conv.rejections
    (notice,) = conv.notices
    assert notice.row == "conversation 1375 utterance 2" and "60.0 s long" in notice.reason
    assert clip_duration(str(tmp_path / data[1]["conversation"][0]["video_name"])) is None


def test_build_writes_an_empty_notice_report_when_nothing_is_wrong(tmp_path):
    opts = BuildOptions(source="ecf", root=FIXTURES, inputs=[ECF_JSON], require_media=False)
    path, conv = build(opts, tmp_path / "ecf.parquet")
    assert not conv.notices
    assert notices_path(path).read_text().strip() == "source,row,field,reason"
