"""Templates, parsers and metrics of the five tasks, against hand-computed values."""

import math

import pytest

from emoverse.tasks import TASK_NAMES, get_task
from emoverse.tasks.base import Answer, most_common
from emoverse.tasks.eri import named_emotion, token_f1


def answers(task, texts):
    return [task.parse(t) for t in texts]


def test_registry_has_the_five_tasks_and_rejects_unknown():
    assert TASK_NAMES == ("msa", "mer", "fer", "eri", "ecpe")
    assert get_task("MSA").name == "msa"
    with pytest.raises(KeyError, match="unknown task 'xyz'"):
        get_task("xyz")


def test_prompts_carry_speech_tag_and_instruction():
    msa = get_task("msa")
    p = msa.prompt("I love it")
    assert p.startswith("The person says: I love it\n<sentiment> ")
    assert get_task("mer").prompt("hi").splitlines()[1].startswith("<emotion> ")
    assert get_task("eri").prompt("hi").splitlines()[1].startswith("<reason> ")
    fer = get_task("fer").prompt("ignored speech")
    assert "The person says" not in fer and fer.startswith("<expression> ")


def test_ecpe_prompt_numbers_utterances_with_emotions():
    ctx = [{"speaker": "A", "text": "hi", "emotion": "neutral"},
           {"speaker": "B", "text": "great news", "emotion": "joy"}]
    p = get_task("ecpe").prompt(context=ctx, target_utterance=2)
    assert "1_neutral. A: hi\n2_joy. B: great news\nThe target utterance is 2." in p
    with pytest.raises(ValueError):
        get_task("ecpe").prompt("no conversation")


@pytest.mark.parametrize("text,value", [
    ("Positive.", "positive"), ("  negative ", "negative"), ("POSITIVE..", "positive"),
    ("Positive\n", "positive")])
def test_msa_parser_tolerates_case_space_and_periods(text, value):
    assert get_task("msa").parse(text).value == value


@pytest.mark.parametrize("text", ["", "Neutral.", "Positive and negative", "posi"])
def test_msa_parser_reports_unparseable_text(text):
    a = get_task("msa").parse(text)
    assert not a.ok and a.value is None and a.error


def test_mer_parser_aliases_and_rejects_others():
    mer = get_task("mer")
    assert mer.parse("Happy.").value == "joy"
    assert mer.parse("sad").value == "sadness"
    assert mer.parse("Anger.").value == "anger"
    assert not mer.parse("joyful").ok
    assert mer.format_answer("surprise") == "Surprise."


def test_msa_metrics_hand_computed():
    msa = get_task("msa")
    golds = ["positive", "positive", "negative", "negative", "negative"]
    preds = answers(msa, ["Positive.", "Negative.", "Negative.", "garbage", "Negative."])
    s = msa.score(golds, preds)
    assert s["accuracy"] == pytest.approx(3 / 5)
    assert s["accuracy_positive"] == pytest.approx(1 / 2)
    assert s["accuracy_negative"] == pytest.approx(2 / 3)
    assert s["unparsed"] == pytest.approx(1 / 5)
    # weighted F1: positive P=1 R=.5 F1=2/3 (w 2/5); negative P=2/3 R=2/3 F1=2/3 (w 3/5)
    assert s["weighted_f1"] == pytest.approx(2 / 3)


def test_mer_weighted_f1_hand_computed():
    mer = get_task("mer")
    golds = ["joy", "joy", "anger", "sadness"]
    preds = answers(mer, ["Joy.", "Anger.", "Anger.", "Joy."])
    s = mer.score(golds, preds)
    assert s["accuracy"] == pytest.approx(0.5)
    # joy P=1/2 R=1/2 F1=1/2 (w .5); anger P=1/2 R=1 F1=2/3 (w .25); sadness 0 (w .25)
    assert s["weighted_f1"] == pytest.approx(0.5 * 0.5 + 0.25 * 2 / 3)


def test_fer_parser_and_phrase_metrics():
    fer = get_task("fer")
    a = fer.parse("lip corners raised ;  Cheeks raised.")
    assert a.value == ("Cheeks raised", "Lip corners raised")
    assert not fer.parse("Smiling broadly").ok
    assert not fer.parse(" ").ok
    golds = [("Cheeks raised", "Lip corners raised"), ("Brows lowered", "Lip corners lowered")]
    preds = answers(fer, ["Lip corners raised", "Brows lowered; Lip corners raised"])
    s = fer.score(golds, preds)
    # tp=2 (LCR in 1, BL in 2), fp=1 (LCR in 2), fn=2 (CR in 1, LCL in 2)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["accuracy"] == 0.0


def test_eri_named_emotion_and_overlap():
    eri = get_task("eri")
    assert named_emotion("Sadness, because he lost") == "sadness"
    assert named_emotion("He seems happy about it") == "joy"
    assert named_emotion("no feeling words") is None
    assert token_f1("the cat sat", "the cat ran") == pytest.approx(2 / 3)
    golds = [{"text": "Joy, because the gift", "emotion": "joy"},
             {"text": "Anger, because the bill", "emotion": "anger"}]
    s = eri.score(golds, answers(eri, ["Joy, because the gift", ""]))
    assert s["emotion_accuracy"] == 0.5 and s["unparsed"] == 0.5
    assert s["token_f1"] == pytest.approx(0.5)


def test_ecpe_parser():
    ecpe = get_task("ecpe")
    assert ecpe.parse("3_joy,1; 3_joy,3").value == ((3, "joy", 1), (3, "joy", 3))
    assert ecpe.parse(" 4_Happy , 2 .").value == ((4, "joy", 2),)
    assert ecpe.parse("").value == ()
    assert not ecpe.parse("3_joy").ok
    assert not ecpe.parse("3_bored,1").ok
    assert ecpe.format_answer({"pairs": [(3, "joy", 1), (3, "joy", 3)]}) == "3_joy,1; 3_joy,3"


def test_ecpe_micro_and_weighted_f1_hand_computed():
    ecpe = get_task("ecpe")
    golds = [{"target": 3, "emotion": "joy", "pairs": ((3, "joy", 1), (3, "joy", 3))},
             {"target": 2, "emotion": "anger", "pairs": ((2, "anger", 1),)},
             {"target": 1, "emotion": "neutral", "pairs": ()}]
    preds = answers(ecpe, ["3_joy,1", "2_anger,2", "1_sadness,1"])
    s = ecpe.score(golds, preds)
    # tp=1, predicted=3, gold=3
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3)
    # joy: tp1 pred1 gold2 -> F1 2/3, weight 2/3; anger: 0, weight 1/3; sadness: no gold
    assert s["f1_joy"] == pytest.approx(2 / 3)
    assert s["weighted_f1"] == pytest.approx(2 / 3 * 2 / 3)


def test_ecpe_baseline_uses_most_common_offset():
    ecpe = get_task("ecpe")
    train = [{"target": 3, "emotion": "joy", "pairs": ((3, "joy", 2),)},
             {"target": 4, "emotion": "joy", "pairs": ((4, "joy", 3),)},
             {"target": 2, "emotion": "fear", "pairs": ((2, "fear", 2),)}]
    evals = [{"target": 5, "emotion": "anger", "pairs": ((5, "anger", 4),)},
             {"target": 2, "emotion": "neutral", "pairs": ()}]
    base = ecpe.baseline(train, evals)
    assert base[0]["pairs"] == ((5, "anger", 4),) and base[1]["pairs"] == ()
    assert ecpe.score(evals, ecpe.answers_from_values(base))["f1"] == 1.0


def test_majority_baseline_is_deterministic():
    assert most_common(["b", "a", "a", "b"]) == "b"
    msa = get_task("msa")
    base = msa.baseline(["negative", "positive", "negative"], ["positive"] * 4)
    assert base == ["negative"] * 4
    assert msa.score(["positive"] * 4, msa.answers_from_values(base))["accuracy"] == 0.0


GOLDS = {"msa": "negative", "mer": "fear", "fer": ("Brows lowered", "Lip corners lowered"),
         "eri": {"text": "Fear, because of the dark", "emotion": "fear"},
         "ecpe": {"pairs": ((2, "fear", 1),)}}
PARSED = {**GOLDS, "ecpe": ((2, "fear", 1),)}  # ECPE answers carry the pairs only


@pytest.mark.parametrize("name", TASK_NAMES)
def test_format_then_parse_round_trips(name):
    task = get_task(name)
    parsed = task.parse(task.format_answer(GOLDS[name]))
    assert parsed.ok and parsed.value == PARSED[name]


def test_unparsed_answers_never_match_a_class():
    msa = get_task("msa")
    s = msa.score(["positive"], [Answer(text="?", error="x")])
    assert s["accuracy"] == 0.0 and not math.isnan(s["weighted_f1"])


def test_msa_acc2_under_both_conventions_hand_computed():
    from emoverse.tasks.msa import Sentiment

    msa = get_task("msa")
    # scores -1.2, 0, 0, 2, -0.4 ; labels as built with the non-negative convention
    golds = [Sentiment("negative", -1.2), Sentiment("positive", 0.0), Sentiment("positive", 0.0),
             Sentiment("positive", 2.0), Sentiment("negative", -0.4)]
    preds = answers(msa, ["Negative.", "Negative.", "Positive.", "Positive.", "Positive."])
    s = msa.score(golds, preds)
    # non-negative: gold n p p p n vs n n p p p -> 3/5; zeros excluded: -1.2, 2, -0.4 -> 2/3
    assert s["acc2_non_negative"] == pytest.approx(3 / 5)
    assert s["acc2_exclude_zero"] == pytest.approx(2 / 3)
    assert "acc2_exclude_zero" not in msa.score(["negative"], answers(msa, ["Negative."]))
    row = {"label_class": "Negative", "label_score": -2.5}
    assert msa.gold(row) == "negative" and msa.gold(row).score == -2.5


def ecf_rows():
    from emoverse.emt.sources import ecf

    from conftest import FORMATS

    conv = ecf.convert(FORMATS / "ecf2_subtask2_test.sample.json", FORMATS, require_media=False)
    return [r for r in conv.rows if r["task"] == "ecpe"]


def test_ecpe_scores_the_ecf_sample_against_itself_perfectly():
    ecpe = get_task("ecpe")
    rows = ecf_rows()
    golds = [ecpe.gold(r) for r in rows]
    assert sum(len(g["pairs"]) for g in golds) == 18  # the sample's annotated pairs
    s = ecpe.score(golds, [ecpe.parse(r["target"]) for r in rows])
    assert s["precision"] == s["recall"] == s["f1"] == s["weighted_f1"] == 1.0


def test_ecpe_scores_deliberately_wrong_pairs_hand_computed():
    ecpe = get_task("ecpe")
    rows = ecf_rows()
    golds = [ecpe.gold(r) for r in rows]
    texts = []
    for row, gold in zip(rows, golds):
        shift = 1 if "-1375-" in row["sample_id"] else 0  # every cause of 1375 one too late
        texts.append("; ".join(f"{u}_{e},{c + shift}" for u, e, c in gold["pairs"]))
    s = ecpe.score(golds, [ecpe.parse(t) for t in texts])
    # 1375 holds 12 of the 18 pairs (disgust 1, fear 1, surprise 5, joy 5). Shifted, all are
    # wrong but one: 15_surprise,13 becomes 15_surprise,14, which is itself annotated. The
    # other 6 (surprise 3, joy 3) are right: 18 predicted, 7 correct, micro P = R = F1 = 7/18.
    assert s["precision"] == s["recall"] == s["f1"] == pytest.approx(7 / 18)
    # per emotion F1: surprise 4/8, joy 3/8, disgust 0, fear 0; weights 8/18, 8/18, 1/18, 1/18
    assert s["f1_surprise"] == pytest.approx(4 / 8)
    assert s["f1_joy"] == pytest.approx(3 / 8)
    assert s["f1_disgust"] == s["f1_fear"] == 0.0
    assert s["weighted_f1"] == pytest.approx(8 / 18 * 4 / 8 + 8 / 18 * 3 / 8)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_each_task_owns_its_answer_shape_budget_and_inputs(name):
    from emoverse.serving.config import DEFAULT_BUDGETS
    from emoverse.serving.schemas import StructuredAnswer

    task = get_task(name)
    fields = task.answer_fields(PARSED[name])
    assert fields and set(StructuredAnswer(**fields).model_dump()) == set(fields)
    assert DEFAULT_BUDGETS[name] == task.answer_budget > 0
    assert task.needs_conversation == (name == "ecpe")
    assert bool(task.classes) == (name in ("msa", "mer"))  # reports draw their confusion


def test_stats_count_each_task_by_its_own_label_summary():
    import pandas as pd

    from emoverse.emt.build import stats

    rows = pd.DataFrame({
        "task": ["msa", "fer", "ecpe", "ecpe", "eri"], "source": ["t"] * 5,
        "split": ["train"] * 5, "target": ["Positive.", "Cheeks raised.", "", "2_joy,1", "x"],
        "label_class": ["positive", None, None, None, None],
        "label_pairs": [None, None, [], [{"emotion_utterance": 2}], None]})
    text = stats(rows)
    assert "msa: positive 1" in text and "fer: Cheeks raised. 1" in text
    assert "ecpe: no pairs 1, pairs 1" in text and "eri: - 1" in text and "total: 5" in text
