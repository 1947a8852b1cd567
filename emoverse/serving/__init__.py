"""Serving on Ray Serve: an HTTP API for the five EMT tasks.

Ray-free modules hold the request logic and are tested without Ray: `config` (the typed
application arguments and the Serve config file), `catalog` (which model ids a run or
model directory serves), `model_pool` (one base model per replica with peft adapters),
`videos` (uploads, the media root, limits, the media stage's own clip processing),
`requests` (validation, prompts, answers), `chat` (the OpenAI-style endpoint), `schemas`
and `api` (the FastAPI app). `app` is the only module that touches Ray Serve.
"""
