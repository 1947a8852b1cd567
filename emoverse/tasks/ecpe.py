"""ECPE: emotion-cause pair extraction in a conversation (SemEval-2024 Task 3, subtask 2).

The prompt lists the conversation with each utterance prefixed `N_emotion.` and names a
target utterance; the answer lists that utterance's pairs as `{utt}_{emotion},{cause}`
joined by `; `, and is empty when it has none. Metrics follow the SemEval scorer: a pair
is correct when utterance, emotion and cause all match; micro P/R/F1 over all pairs, and
the weighted-average F1 over the six non-neutral emotions (weights: gold pair shares).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Mapping, Sequence

from .base import EMOTIONS, Answer, Task, canonical_emotion, unparsed_rate

PAIR_EMOTIONS = tuple(e for e in EMOTIONS if e != "neutral")
_PAIR = re.compile(r"^(\d+)\s*_\s*([a-z]+)\s*,\s*(\d+)$")
Pair = tuple[int, str, int]


def prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


class CausePairTask(Task):
    name = "ecpe"
    title = "Emotion-cause pair extraction"
    tag = "<cause>"
    instruction = ("List the emotion-cause pairs of the target utterance as "
                   "utterance_emotion,cause_utterance separated by ; (empty if none).")
    primary_metric = "weighted_f1"
    answer_budget = 48
    needs_conversation = True

    def prompt(self, transcript: str = "", context: Sequence[Mapping] | None = None,
               target_utterance: int | None = None) -> str:
        if not context or target_utterance is None:
            raise ValueError("ecpe prompts need the conversation and a target utterance")
        lines = [f"{i}_{u['emotion']}. {u['speaker']}: {u['text'].strip()}"
                 for i, u in enumerate(context, start=1)]
        return "\n".join(["The conversation:", *lines,
                          f"The target utterance is {target_utterance}.",
                          f"{self.tag} {self.instruction}"])

    def format_answer(self, gold: Mapping) -> str:
        return "; ".join(f"{u}_{e},{c}" for u, e, c in gold["pairs"])

    def parse(self, text: str) -> Answer:
        body = text.strip().rstrip(".").strip()
        if not body or body.lower() in {"none", "empty"}:
            return Answer(text=text, value=())
        pairs = []
        for part in body.split(";"):
            m = _PAIR.match(part.strip().lower())
            emotion = canonical_emotion(m.group(2)) if m else None
            if not m or emotion is None:
                return Answer(text=text, error=f"not an emotion-cause pair: {part.strip()!r}")
            pairs.append((int(m.group(1)), emotion, int(m.group(3))))
        return Answer(text=text, value=tuple(sorted(set(pairs))))

    def gold(self, row: Mapping) -> dict:
        raw = row["label_pairs"]
        pairs = tuple(sorted({(int(p["emotion_utterance"]), canonical_emotion(p["emotion"]),
                               int(p["cause_utterance"])) for p in ([] if raw is None else raw)}))
        target = int(row["target_utterance"])
        return {"target": target, "emotion": row["context"][target - 1]["emotion"],
                "pairs": pairs}

    def score(self, golds: Sequence[Any], answers: Sequence[Answer]) -> dict[str, float]:
        if not golds:
            return {}
        gold_pairs = [set(g["pairs"]) for g in golds]
        pred_pairs = [set(a.value) if a.ok else set() for a in answers]
        tp = sum(len(g & p) for g, p in zip(gold_pairs, pred_pairs))
        n_pred = sum(map(len, pred_pairs))
        n_gold = sum(map(len, gold_pairs))
        p, r, f = prf(tp, n_pred, n_gold)
        scores = {"precision": p, "recall": r, "f1": f}
        weights = Counter(e for g in gold_pairs for _, e, _ in g)
        w_f1 = 0.0
        for emotion in PAIR_EMOTIONS:
            g_e = [{x for x in g if x[1] == emotion} for g in gold_pairs]
            p_e = [{x for x in q if x[1] == emotion} for q in pred_pairs]
            _, _, f_e = prf(sum(len(a & b) for a, b in zip(g_e, p_e)),
                            sum(map(len, p_e)), sum(map(len, g_e)))
            scores[f"f1_{emotion}"] = f_e
            w_f1 += f_e * weights[emotion] / n_gold if n_gold else 0.0
        scores.update(weighted_f1=w_f1, unparsed=unparsed_rate(answers), n=float(len(golds)))
        return scores

    def answer_fields(self, value: Sequence[Pair]) -> dict:
        return {"pairs": [{"utterance": u, "emotion": e, "cause": c} for u, e, c in value]}

    def label_summary(self, row: Mapping) -> str:
        pairs = row.get("label_pairs")
        return "pairs" if pairs is not None and len(pairs) else "no pairs"

    def baseline(self, train_golds: Sequence[Any], eval_golds: Sequence[Any]) -> list[Any]:
        """Every emotional target caused by the utterance at the most common offset."""
        offsets = [c - u for g in train_golds for u, _, c in g["pairs"]]
        offset = Counter(offsets).most_common(1)[0][0] if offsets else 0
        return [{**g, "pairs": () if g["emotion"] == "neutral"
                 else ((g["target"], g["emotion"], g["target"] + offset),)} for g in eval_golds]

    def answers_from_values(self, values: Sequence[Any]) -> list[Answer]:
        return [Answer(text=self.format_answer(v), value=v["pairs"]) for v in values]


TASK = CausePairTask()
