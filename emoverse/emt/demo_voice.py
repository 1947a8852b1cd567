"""A voice for the demo clips: a synthetic speaking voice whose pitch says how it is meant.

Every demo clip carries an audio track of a voice speaking for the clip's length: a
harmonic tone (four partials) gliding in pitch, cut into syllables. Most clips speak in
a plain voice (middle pitch, nearly level), which says nothing about the label. The
samples the voice decides (`DemoSample.voice`, source `demo-voice`) speak in a bright
voice (high and rising: positive, joy) or a dull one (low and falling: negative,
sadness), while their words are filler and their face is neutral.
"""

from __future__ import annotations

import numpy as np

RATE = 16000  # Hz, the rate the tracks are written at (Whisper's, so no resampling)
# pitch range (Hz) and glide over the clip (share of the pitch, start to end)
VOICES = {
    "plain": ((150.0, 190.0), (-0.08, 0.08)),
    "bright": ((250.0, 300.0), (0.25, 0.35)),
    "dull": ((95.0, 120.0), (-0.35, -0.25)),
}
VOICE_LABELS = {  # what a decided voice means, per task
    "msa": {"bright": "positive", "dull": "negative"},
    "mer": {"bright": "joy", "dull": "sadness"},
}


def render_voice(kind: str, rng: np.random.Generator, seconds: float,
                 rate: int = RATE) -> np.ndarray:
    """`seconds` of the `kind` voice as float32 samples in [-1, 1]."""
    (lo, hi), (glide_lo, glide_hi) = VOICES[kind]
    n = max(1, int(round(seconds * rate)))
    t = np.arange(n) / rate
    f0 = rng.uniform(lo, hi)
    glide = rng.uniform(glide_lo, glide_hi)
    pitch = f0 * (1 + glide * (2 * t / max(seconds, 1e-6) - 1))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    tone = sum(0.6 ** k * np.sin((k + 1) * phase) for k in range(4))
    syllables = rng.uniform(3.0, 5.0)  # a second
    envelope = np.sin(np.pi * ((t * syllables + rng.uniform()) % 1.0)) ** 0.6
    wave = 0.25 * tone * envelope + rng.normal(0, 0.01, n)
    return np.clip(wave, -1, 1).astype(np.float32)
