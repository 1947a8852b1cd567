"""The demo EMT set: all five tasks on generated clips of real faces.

`emoverse emt demo --out DIR [--size N] [--seed S]`

Labels are composed so that each kind of evidence matters:
- FER is decided by the face alone (smile or frown), the prompt carries no speech;
- MSA follows the words when they are polar, and the face when they are neutral;
- MER names the emotion the words state (anger, fear, surprise, disgust), and when the
  words are neutral, the face decides between joy and sadness;
- ERI explains the MER emotion with the expression and the topic;
- ECPE marks, in a conversation with gold emotions that ends at the target utterance,
  the utterance that mentions the event (the target or the one before) as the cause;
- with `voice` > 0, that share of MSA and MER samples is decided by the voice alone
  (`emoverse.emt.demo_voice`): filler words, a neutral face, source `demo-voice`.
Every clip speaks (an AAC track); only the voice-decided ones say anything by it.
Everything is deterministic for a seed: clip k of the set is rendered from its own
random stream, so any subset can be regenerated in parallel.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emoverse.emt.demo_clips import (EXPRESSIONS, FACES, FPS, FRAME, NEUTRAL_FACE,
                                     render_clip, write_mp4)
from emoverse.emt.demo_voice import RATE, VOICE_LABELS, render_voice
from emoverse.emt.manifest import write_manifest
from emoverse.tasks import get_task

POSITIVE = ["I love this wonderful gift", "this is a great day", "we won the game tonight",
            "I am so glad you came", "what a lovely surprise party", "the trip was amazing"]
NEGATIVE = ["I hate this awful weather", "this is a terrible day", "we lost the game tonight",
            "I am so upset about it", "what a horrible mess", "the trip was a disaster"]
NEUTRAL = ["I went to the store on Monday", "the bus comes at noon", "we talked about the plan",
           "I read the report this morning", "the meeting is in the office", "she moved the chair"]
EMOTION_CUES = {
    "anger": ["I am furious about the bill", "he broke my phone again and I am mad"],
    "fear": ["I am scared of the dark hall", "there is a spider and I am terrified"],
    "surprise": ["I am shocked by the news", "wow I did not expect that at all"],
    "disgust": ["that smell is so gross", "the food was rotten and disgusting"],
}
FACE_EMOTION = {"smile": "joy", "frown": "sadness"}
FACE_SENTIMENT = {"smile": "positive", "frown": "negative"}
FACE_WORD = {"smile": "smiling", "frown": "frowning"}
FACE_ACTIONS = {"smile": ("Cheeks raised", "Lip corners raised"),
                "frown": ("Brows lowered", "Lip corners lowered")}
SPEAKERS = ["Anna", "Ben", "Chris", "Dana"]
EVENTS = ["the gift", "the exam", "the accident", "the party", "the spider", "the letter"]
FILLERS = ["okay", "I see", "tell me more", "right", "go on", "hmm"]
EMOTION_WORDS = {**EMOTION_CUES, "joy": POSITIVE, "sadness": NEGATIVE, "neutral": FILLERS}

# Share of each task in the set, and of each split.
TASK_SHARES = {"fer": 0.3, "msa": 0.3, "mer": 0.24, "eri": 0.08, "ecpe": 0.08}
SPLIT_SHARES = {"train": 0.84, "valid": 0.04, "test": 0.12}


VOICE_SOURCE = "demo-voice"  # the samples whose label the voice decides
VOICE_KEY = 0x564F4943  # the draw that makes a sample voice-decided ("VOIC")


@dataclass(frozen=True)
class DemoSample:
    row: dict
    face: int
    expression: str
    voice: str = "plain"  # how the clip's voice speaks (emoverse.emt.demo_voice.VOICES)


def lexicon() -> list[str]:
    """Every string the demo set can put into a prompt or answer (for tokenizer training)."""
    lines = [*POSITIVE, *NEGATIVE, *NEUTRAL, *SPEAKERS, *EVENTS, *FILLERS]
    lines += [c for cues in EMOTION_CUES.values() for c in cues]
    lines += [w for words in FACE_ACTIONS.values() for w in words] + list(FACE_WORD.values())
    return lines


def _speech(rng: np.random.Generator, pool: list[str]) -> str:
    return pool[rng.integers(len(pool))]


def _mer_case(rng: np.random.Generator, expression: str) -> tuple[str, str]:
    """(transcript, emotion): stated by the words half the time, else shown by the face."""
    if rng.random() < 0.5:
        emotion = list(EMOTION_CUES)[rng.integers(len(EMOTION_CUES))]
        return _speech(rng, EMOTION_CUES[emotion]), emotion
    return _speech(rng, NEUTRAL), FACE_EMOTION[expression]


def _conversation(rng: np.random.Generator) -> tuple[list[dict], int, list[dict]]:
    """A conversation up to its target (last) utterance, and the target's cause pairs.

    As in ECF, causes precede or coincide with the emotion: the cause is the target
    itself or the utterance before it, whichever mentions the event.
    """
    n = int(rng.integers(2, 5))
    target = n
    cause = target if rng.random() < 0.5 else target - 1
    emotions = [e for e in EMOTION_CUES] + ["joy", "sadness", "neutral"]
    target_emotion = emotions[rng.integers(len(emotions))]
    context = []
    for i in range(1, n + 1):
        # The target says something that carries its emotion, as emotional turns do.
        words = _speech(rng, EMOTION_WORDS[target_emotion] if i == target else FILLERS)
        if i == cause:
            words = f"{words} , it is about {_speech(rng, EVENTS)}"
        context.append({"speaker": SPEAKERS[(i - 1) % len(SPEAKERS)], "text": words,
                        "emotion": target_emotion if i == target else "neutral"})
    pairs = [] if target_emotion == "neutral" else [
        {"emotion_utterance": target, "emotion": target_emotion, "cause_utterance": cause}]
    return context, target, pairs


def make_sample(task: str, index: int, split: str, rng: np.random.Generator) -> DemoSample:
    """One labelled sample (without its clip) for `task`."""
    face = int(rng.integers(len(FACES)))
    expression = EXPRESSIONS[rng.integers(len(EXPRESSIONS))]
    row = dict(sample_id=f"demo-{task}-{index:05d}", task=task, source="demo", split=split,
               transcript="", context=None, target_utterance=None, label_class=None,
               label_pairs=None)
    if task == "fer":
        gold = FACE_ACTIONS[expression]
        row.update(label_class=expression)
    elif task == "msa":
        polar = rng.random() < 0.5
        sentiment = ("positive" if rng.random() < 0.5 else "negative") if polar \
            else FACE_SENTIMENT[expression]
        pool = {"positive": POSITIVE, "negative": NEGATIVE}[sentiment] if polar else NEUTRAL
        row.update(transcript=_speech(rng, pool), label_class=sentiment)
        gold = sentiment
    elif task == "mer":
        transcript, gold = _mer_case(rng, expression)
        row.update(transcript=transcript, label_class=gold)
    elif task == "eri":
        transcript, emotion = _mer_case(rng, expression)
        text = (f"{emotion.capitalize()}, because the person is {FACE_WORD[expression]} "
                f"while saying {transcript}.")
        row.update(transcript=transcript, label_class=emotion)
        gold = {"text": text, "emotion": emotion}
    elif task == "ecpe":
        context, target, pairs = _conversation(rng)
        row.update(context=context, target_utterance=target, label_pairs=pairs,
                   transcript=context[target - 1]["text"])
        gold = {"pairs": [(p["emotion_utterance"], p["emotion"], p["cause_utterance"])
                          for p in pairs]}
    else:
        raise KeyError(f"the demo set has no generator for task {task!r}")
    spec = get_task(task)
    row["prompt"] = spec.prompt(row["transcript"], row["context"], row["target_utterance"])
    row["target"] = spec.format_answer(gold)
    return DemoSample(row=row, face=face, expression=expression)


def voice_sample(task: str, index: int, split: str, rng: np.random.Generator) -> DemoSample:
    """One MSA or MER sample whose label only its voice gives away: filler words and a
    neutral face (a smile or frown drawn at random would contradict the face-decided
    samples, which the tiny model then learnt less: MSA's face-decided rows at chance)."""
    face = int(rng.integers(len(FACES)))
    rng.integers(len(EXPRESSIONS))  # the draw a face-decided sample makes here
    expression = NEUTRAL_FACE
    voice = "bright" if rng.random() < 0.5 else "dull"
    label = VOICE_LABELS[task][voice]
    spec = get_task(task)
    transcript = _speech(rng, FILLERS)
    row = dict(sample_id=f"demo-{task}-{index:05d}", task=task, source=VOICE_SOURCE,
               split=split, transcript=transcript, context=None, target_utterance=None,
               label_class=label, label_pairs=None)
    row["prompt"] = spec.prompt(transcript, None, None)
    row["target"] = spec.format_answer(label)
    return DemoSample(row=row, face=face, expression=expression, voice=voice)


def plan(size: int, seed: int, voice: float = 0.0) -> list[DemoSample]:
    """All samples of a demo set of about `size` rows, in a shuffled, seeded order;
    `voice`: the share of MSA and MER samples the voice decides."""
    samples = []
    for t, (task, share) in enumerate(TASK_SHARES.items()):
        n_task = max(3, round(size * share))
        counts = {s: max(1, round(n_task * f)) for s, f in SPLIT_SHARES.items()}
        index = 0
        for split, count in counts.items():
            for _ in range(count):
                rng = np.random.default_rng([seed, t, index])
                # drawn apart, so a set without voice samples is the one it always was
                heard = task in VOICE_LABELS and voice > 0 and \
                    np.random.default_rng([seed, t, index, VOICE_KEY]).random() < voice
                samples.append(voice_sample(task, index, split, rng) if heard
                               else make_sample(task, index, split, rng))
                index += 1
    order = np.random.default_rng([seed, 99]).permutation(len(samples))
    return [samples[i] for i in order]


def _render(job: tuple[DemoSample, str, int, int, int]) -> str:
    sample, clip_dir, seed, frames, side = job
    rng = np.random.default_rng([seed, 7, zlib.crc32(sample.row["sample_id"].encode())])
    path = os.path.join(clip_dir, f"{sample.row['sample_id']}.mp4")
    clip = render_clip(FACES[sample.face], sample.expression, rng, frames)
    if side != clip.shape[1]:  # larger frames, as real corpora have (benchmarks)
        import cv2

        clip = np.stack([cv2.resize(f, (side, side), interpolation=cv2.INTER_LINEAR)
                         for f in clip])
    # its own stream: the frames are the ones a clip without a voice had
    speech = np.random.default_rng([seed, 8, zlib.crc32(sample.row["sample_id"].encode())])
    write_mp4(clip, path, audio=render_voice(sample.voice, speech, frames / FPS), audio_rate=RATE)
    return path


def build_demo(out: str | Path, size: int = 400, seed: int = 0, frames: int = 8,
               workers: int | None = None, progress=None, side: int = FRAME,
               voice: float = 0.0) -> Path:
    """Render the demo clips under `out/clips` and write `out/manifest.parquet`;
    `voice`: the share of MSA and MER samples the voice decides."""
    out = Path(out)
    clip_dir = out / "clips"
    clip_dir.mkdir(parents=True, exist_ok=True)
    samples = plan(size, seed, voice)
    jobs = [(s, str(clip_dir), seed, frames, side) for s in samples]
    workers = workers or min(4, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        paths = []
        for path in pool.map(_render, jobs, chunksize=32):
            paths.append(path)
            if progress is not None:
                progress(len(paths), len(jobs))
    rows = [{**s.row, "media_path": p} for s, p in zip(samples, paths)]
    return write_manifest(rows, out / "manifest.parquet")
