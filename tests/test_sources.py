"""Converters: the real samples in ../shared/formats and fixtures in the exact layouts."""

import csv
import json
from pathlib import Path

import pytest

from emoverse.cli import main
from emoverse.emt.build import BuildOptions, build, convert, rejections_path
from emoverse.emt.manifest import read_manifest
from emoverse.emt.sources import ecf, meld, mmsa
from emoverse.emt.sources.common import SourceError, parse_timestamp
from emoverse.emt.sources.openface import describe
from emoverse.tasks import get_task

FORMATS = Path(__file__).resolve().parents[2] / "shared" / "formats"

MELD_CSV = FORMATS / "meld_test_sent_emo.sample.csv"
ECF_JSON = FORMATS / "ecf2_subtask2_test.sample.json"
HEADER = ("Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,Season,"
          "Episode,StartTime,EndTime\n")


def by_id(rows):
    return {r["sample_id"]: r for r in rows}


def test_timestamps_in_both_corpus_styles():
    assert parse_timestamp("00:14:38,127", "t") == pytest.approx(878.127)
    assert parse_timestamp("0:10:44,769", "t") == pytest.approx(644.769)
    assert parse_timestamp("00:07:40.335", "t") == pytest.approx(460.335)
    for bad in ("14:38", "00:61:00,000", "abc"):
        with pytest.raises(ValueError, match="malformed time stamp"):
            parse_timestamp(bad, "t")


def test_meld_sample_converts_with_hand_read_values():
    conv = meld.convert(MELD_CSV, FORMATS / "clips", require_media=False)
    assert not conv.rejections
    rows = by_id(conv.rows)
    # 47 utterances in dialogues 0-5; 26 have a positive or negative sentiment
    assert sum(r["task"] == "mer" for r in conv.rows) == 47
    assert sum(r["task"] == "msa" for r in conv.rows) == 26
    first = rows["meld-mer-test-dia0_utt0"]
    assert first["label_class"] == "surprise" and first["split"] == "test"
    assert first["transcript"] == "Why do all you’re coffee mugs have numbers on the bottom?"
    assert first["media_path"].endswith("clips/dia0_utt0.mp4")
    assert first["target"] == "Surprise."
    assert rows["meld-msa-test-dia0_utt0"]["target"] == "Positive."
    second = rows["meld-mer-test-dia0_utt1"]
    assert second["label_class"] == "anger" and "‘Where’s number 27?!’" in second["transcript"]
    assert rows["meld-msa-test-dia0_utt1"]["label_class"] == "negative"
    assert "meld-msa-test-dia0_utt2" not in rows  # neutral sentiment: MER only


def test_meld_bad_rows_are_reported_and_the_rest_converts(tmp_path):
    lines = [
        '1,Fine words,A,joy,positive,0,0,1,1,"00:00:01,000","00:00:02,000"',
        '2,Bad emotion,A,bored,positive,0,1,1,1,"00:00:01,000","00:00:02,000"',
        '3,Bad time,A,joy,positive,0,2,1,1,"00:00:01","00:00:02,000"',
        '4,,A,joy,positive,0,3,1,1,"00:00:01,000","00:00:02,000"',
        '5,Backwards,A,joy,positive,0,4,1,1,"00:00:05,000","00:00:02,000"',
    ]
    path = tmp_path / "dev_sent_emo.csv"
    path.write_bytes((HEADER + "\n".join(lines) + "\n").encode("utf-8")
                     + b'6,caf\xe9 latin-1,A,joy,positive,0,5,1,1,"00:00:01,000","00:00:02,000"\n')
    clips = tmp_path / "clips"
    clips.mkdir()
    for u in (0, 1, 2, 3, 4):
        (clips / f"dia0_utt{u}.mp4").touch()
    conv = meld.convert(path, clips)
    # MELD's stamps cut nothing: a malformed or reversed one is a notice, not a lost row
    assert [r["sample_id"] for r in conv.rows] == [
        f"meld-{t}-valid-dia0_utt{u}" for u in (0, 2, 4) for t in ("mer", "msa")]
    reasons = {(r.row, r.field): r.reason for r in conv.rejections}
    assert reasons[("dev_sent_emo.csv:3", "Emotion")] == "unknown emotion 'bored'"
    assert reasons[("dev_sent_emo.csv:5", "Utterance")] == "empty text"
    assert reasons[("dev_sent_emo.csv:7", "Utterance")] == "text is not valid UTF-8"
    assert len(conv.rejections) == 3
    notices = {(r.row, r.field): r.reason for r in conv.notices}
    assert "malformed time stamp" in notices[("dev_sent_emo.csv:4", "StartTime")]
    assert notices[("dev_sent_emo.csv:6", "EndTime")].startswith("reversed time stamps")
    assert len(conv.notices) == 2


def test_meld_missing_clips_and_columns(tmp_path):
    conv = meld.convert(MELD_CSV, tmp_path)  # no clips there
    assert not conv.rows and len(conv.rejections) == 47
    assert {r.field for r in conv.rejections} == {"media_path"}
    bad = tmp_path / "test_sent_emo.csv"
    bad.write_text("Utterance,Speaker\nhi,A\n")
    with pytest.raises(SourceError, match="missing column"):
        meld.convert(bad, tmp_path)


def test_ecf_sample_converts_with_the_pairs_of_conversation_1375():
    conv = ecf.convert(ECF_JSON, FORMATS, require_media=False)
    assert not conv.rejections
    rows = by_id(conv.rows)
    assert len(rows) == 16 + 10 + 5 + 7
    answers = {k: rows[f"ecf-ecpe-test-1375-{k}"]["target"] for k in (1, 2, 5, 10, 15, 16)}
    assert answers == {1: "1_disgust,1", 2: "", 5: "5_surprise,2; 5_surprise,5",
                       10: "10_joy,8; 10_joy,10", 15: "15_surprise,13; 15_surprise,14",
                       16: "16_joy,8; 16_joy,16"}
    prompt = rows["ecf-ecpe-test-1375-5"]["prompt"]
    assert "1_disgust. Chandler: Please do not do that again . It is a horrible sound ." in prompt
    assert "The target utterance is 5." in prompt
    assert rows["ecf-ecpe-test-1375-5"]["media_path"].endswith("dia1375utt5.mp4")
    total = sum(len(rows[f"ecf-ecpe-test-1375-{k}"]["label_pairs"]) for k in range(1, 17))
    assert total == 12


def test_ecf_scored_against_itself_and_against_wrong_pairs():
    conv = ecf.convert(ECF_JSON, FORMATS, require_media=False)
    task = get_task("ecpe")
    golds = [task.gold(r) for r in conv.rows]
    perfect = task.score(golds, [task.parse(r["target"]) for r in conv.rows])
    assert perfect["f1"] == 1.0 and perfect["weighted_f1"] == 1.0
    # predict each emotion utterance as its own cause: 13 predictions (one per emotion
    # utterance with pairs), 9 of the 18 gold pairs are self-caused
    wrong = [task.parse("; ".join(f"{u}_{e},{u}" for u, e, _ in g["pairs"])) for g in golds]
    s = task.score(golds, wrong)
    assert s["precision"] == pytest.approx(9 / 13) and s["recall"] == pytest.approx(9 / 18)


def test_ecf_episode_spans(tmp_path):
    conv = ecf.convert(ECF_JSON, FORMATS, episodes=tmp_path, require_media=False)
    first = by_id(conv.rows)["ecf-ecpe-test-1375-1"]
    assert first["media_path"] == str(tmp_path / "S01E01.mp4")
    assert first["media_start"] == pytest.approx(460.335)
    assert first["media_end"] == pytest.approx(464.880)


def test_ecf_bad_conversations_are_rejected_alone(tmp_path):
    data = json.loads(ECF_JSON.read_text())
    data[1]["conversation"][0]["emotion"] = "bored"
    data[2]["emotion-cause_pairs"].append(["x", "1"])
    path = tmp_path / "Subtask_2_train.json"
    path.write_text(json.dumps(data))
    conv = ecf.convert(path, FORMATS, require_media=False)
    assert {r.row for r in conv.rejections} == {"conversation 1376", "conversation 1377"}
    assert len(conv.rows) == 16 + 7 and conv.rows[0]["split"] == "train"
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(SourceError, match="broken.json: not JSON"):
        ecf.convert(tmp_path / "broken.json", FORMATS, split="test")


def write_mmsa(root: Path) -> None:
    rows = [("vidA", "1", "I really love it", "2.4", "test"),
            ("vidA", "2", "it was fine I guess", "0.0", "train"),
            ("vidB", "1", "this is bad", "-1.2", "train"),
            ("vidB", "2", "no mode", "1.0", "holdout"),
            ("vidC", "1", "", "1.0", "valid")]
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "text", "label", "label_T", "label_A", "label_V",
                    "annotation", "mode"])
        for vid, clip, text, label, mode in rows:
            w.writerow([vid, clip, text, label, label, label, label, "Positive", mode])
            (root / "Raw" / vid).mkdir(parents=True, exist_ok=True)
            (root / "Raw" / vid / f"{clip}.mp4").touch()
    with open(root / "emotions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video_id", "clip_id", "happy", "sad", "anger", "surprise", "disgust", "fear"])
        w.writerow(["vidA", "1", "2.0", "0", "0", "0.3", "0", "0"])
        w.writerow(["vidB", "1", "0", "0", "0", "0", "0", "0"])


def test_mmsa_fixture_both_acc2_conventions_and_emotions(tmp_path):
    write_mmsa(tmp_path)
    conv = mmsa.convert(tmp_path, "mosei", "non-negative", tmp_path / "emotions.csv")
    rows = by_id(conv.rows)
    assert rows["mosei-msa-test-vidA-1"]["label_class"] == "positive"
    assert rows["mosei-msa-test-vidA-1"]["label_score"] == 2.4
    assert rows["mosei-msa-train-vidA-2"]["label_class"] == "positive"  # 0 is non-negative
    assert rows["mosei-msa-train-vidB-1"]["target"] == "Negative."
    assert rows["mosei-mer-test-vidA-1"]["label_class"] == "joy"
    assert rows["mosei-mer-train-vidB-1"]["label_class"] == "neutral"
    assert rows["mosei-msa-test-vidA-1"]["media_path"] == str(tmp_path / "Raw/vidA/1.mp4")
    fields = {r.row: r.field for r in conv.rejections}
    assert fields == {"label.csv:5": "mode", "label.csv:6": "text"}
    strict = mmsa.convert(tmp_path, "mosei", "exclude-zero")
    assert "mosei-msa-train-vidA-2" not in by_id(strict.rows)
    assert any("exclude-zero" in r.reason for r in strict.rejections)


OPENFACE_HEADER = ["frame", " face_id", " timestamp", " confidence", " success",
                   " AU01_r", " AU04_r", " AU06_r", " AU12_r", " AU15_r",
                   " AU01_c", " AU04_c", " AU06_c", " AU12_c", " AU15_c"]


def write_openface(path: Path, frames) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(OPENFACE_HEADER)
        for i, (success, r, c) in enumerate(frames, start=1):
            w.writerow([i, 0, i / 25, 0.98, success, *r, *c])


def test_openface_peak_frame_and_phrases(tmp_path):
    path = tmp_path / "clip.csv"
    write_openface(path, [
        (1, [0.1, 0, 0.5, 0.4, 0], [0, 0, 0, 0, 0]),
        (1, [0.2, 0, 2.1, 2.8, 0], [0, 0, 1, 1, 0]),  # the peak: a smile
        (0, [4, 4, 4, 4, 4], [1, 1, 1, 1, 1]),  # tracking failed: ignored
        (1, [1.5, 0, 1.0, 1.2, 0], [0, 0, 1, 1, 0]),
    ])
    phrases, peak = describe(path)
    assert peak == 1 and phrases == ("Cheeks raised", "Lip corners raised")
    write_openface(path, [(1, [0.2] * 5, [0] * 5)])
    assert describe(path)[0] == ("Neutral face",)


def test_build_with_openface_and_rationales_reports_everything(tmp_path):
    write_mmsa(tmp_path)
    write_openface(tmp_path / "openface" / "vidA" / "1.csv",
                   [(1, [0, 3.0, 0, 0, 2.0], [0, 1, 0, 0, 1])])
    (tmp_path / "eri.jsonl").write_bytes(
        b'{"id": "vidA/1", "explanation": "Joy, because she loves the gift."}\n'
        b'{"id": "vidZ/9", "explanation": "Unknown clip."}\n'
        b'not json\n'
        b'{"id": "vidA/1", "explanation": "A second one."}\n')
    opts = BuildOptions(source="mosei", root=tmp_path, emotions=tmp_path / "emotions.csv",
                        openface=tmp_path / "openface", rationales=tmp_path / "eri.jsonl")
    path, conv = build(opts, tmp_path / "out" / "mosei.parquet")
    table = read_manifest(path).to_pandas().set_index("sample_id")
    fer = table.loc["mosei-fer-test-vidA-1"]
    assert fer["target"] == "Brows lowered; Lip corners lowered." and fer["peak_frame"] == 0
    eri = table.loc["mosei-eri-test-vidA-1"]
    assert eri["label_class"] == "joy" and eri["transcript"] == "I really love it"
    with open(rejections_path(path)) as f:
        report = list(csv.DictReader(f))
    reasons = [(r["field"], r["reason"]) for r in report]
    assert ("id", "no converted clip 'vidZ/9'") in reasons
    assert any(f == "line" for f, _ in reasons)
    assert any(f == "sample_id" and "duplicate" in why for f, why in reasons)
    assert sum(f == "openface" for f, _ in reasons) == 2  # vidA/2 and vidB/1 have no CSV


def test_cli_build_and_stats(tmp_path, capsys):
    out = tmp_path / "ecf.parquet"
    assert main(["emt", "build", "--source", "ecf", "--root", str(FORMATS), "--out", str(out),
                 "--no-media-check"]) == 0
    assert "38 samples; 0 input rows rejected" in capsys.readouterr().out
    assert main(["emt", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert ["ecpe", "ecf", "test", "38"] in [line.split() for line in text.splitlines()]
    assert "total: 38" in text
    code = main(["emt", "build", "--source", "meld", "--root", str(tmp_path), "--out",
                 str(tmp_path / "m.parquet")])
    assert code == 2 and "no *sent_emo*.csv files" in capsys.readouterr().err


def test_build_with_everything_rejected_keeps_the_report(tmp_path):
    opts = BuildOptions(source="meld", root=FORMATS, inputs=[MELD_CSV], clips=tmp_path)
    with pytest.raises(SourceError, match="every row was rejected"):
        build(opts, tmp_path / "m.parquet")
    assert rejections_path(tmp_path / "m.parquet").is_file()
    assert len(convert(opts).rejections) == 47
