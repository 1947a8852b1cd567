"""`emoverse bench serve [--model RUN_OR_MODEL] [--clients 16] [--duration 20]`

A closed-loop load on the serving application, run three times in one go on the same
requests: `/v1/analyze` with dynamic batching off, then on, then the same requests as
streamed chats (`/v1/chat/completions`, `stream: true`, batching on). Each of CLIENTS
threads sends requests (the demo set's rows of every task, by path under the media
root) back to back for DURATION seconds. Prints requests/s, p50/p99 latency, time to
the first token (a whole answer's latency when not streamed), errors and the mean batch
size of each mode, and the throughput ratios on/off and stream/on.

Without `--model` it serves the tiny random-init model, which never emits its end
token: every answer is exactly `--new-tokens` tokens, so each request asks the same
work of the model. The model deployment is one replica (no autoscaling) with room for
every client, so the modes differ in batching alone; the gateway's clip cache makes
repeated clips cheap in both.
"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from emoverse.console import logger
from emoverse.recipe import MediaConfig, load_recipe
from emoverse.serving.config import ServeArgs
from emoverse.tasks import TASK_NAMES, get_task

log = logger(__name__)


def request_bodies(manifest_path: Path, clips_root: Path) -> list[dict]:
    """One /v1/analyze body per manifest row, the clip given by path under the root."""
    import pandas as pd

    rows = pd.read_parquet(manifest_path)
    bodies = []
    for _, row in rows.iterrows():
        body = {"task": row.task, "video_path": str(Path(row.media_path).relative_to(clips_root))}
        if get_task(row.task).needs_conversation:
            body.update(conversation=[dict(u) for u in row.context],
                        target_utterance=int(row.target_utterance))
        elif row.transcript:
            body["transcript"] = row.transcript
        bodies.append(body)
    return bodies


def bench_args(model: str, media_root: Path, batching: bool, clients: int,
               new_tokens: int, media: MediaConfig | None) -> ServeArgs:
    return ServeArgs(
        model=model, media_root=str(media_root), media=media,
        max_new_tokens={t: new_tokens for t in TASK_NAMES},
        batching={"enabled": batching, "max_batch_size": clients},
        model_server={"num_cpus": 1, "autoscaling": None, "max_ongoing_requests": 2 * clients,
                      "max_queued_requests": -1},
        gateway={"num_cpus": 0.5, "max_ongoing_requests": 4 * clients},
        auth={"api_keys_env": None})  # open: the shell's EMOVERSE_API_KEYS is not the bench's


def chat_body(body: dict) -> dict:
    """The /v1/analyze body as a streamed chat with emoverse's task fields."""
    chat = {k: v for k, v in body.items() if k in ("task", "conversation", "target_utterance")}
    content = [{"type": "video_url", "video_url": {"url": body["video_path"]}}]
    if body.get("transcript"):
        content.append({"type": "text", "text": body["transcript"]})
    return {**chat, "stream": True, "messages": [{"role": "user", "content": content}]}


def analyze_once(session, url: str, body: dict, start: float) -> tuple[int, int, float]:
    """(status, batch size, seconds to the answer) of one /v1/analyze request."""
    r = session.post(f"{url}/v1/analyze", json=body, timeout=120)
    return r.status_code, r.json().get("timing", {}).get("batch_size", 0), \
        time.perf_counter() - start


def stream_once(session, url: str, body: dict, start: float) -> tuple[int, int, float]:
    """(status, batch size, seconds to the first token) of one streamed chat. The server
    opens the stream once the first token is decoded, so its first event marks it (the
    tiny random model's tokens often decode to no text at all)."""
    import json

    first, batch = None, 0
    with session.post(f"{url}/v1/chat/completions", json=chat_body(body), timeout=120,
                      stream=True) as r:
        if r.status_code != 200:
            return r.status_code, 0, 0.0
        for line in r.iter_lines(chunk_size=None):  # as the bytes come, not 512 at a time
            if not line.startswith(b"data: {"):
                continue
            first = first or time.perf_counter() - start
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return 500, 0, 0.0
            if chunk.get("emoverse"):
                batch = chunk["emoverse"]["timing"]["batch_size"]
    return 200, batch, first or 0.0


def closed_loop(url: str, bodies: list[dict], clients: int, duration: float,
                send=analyze_once) -> dict:
    """CLIENTS threads sending back to back until the deadline; latencies and statuses."""
    import requests

    lock = threading.Lock()
    counter = iter(range(10**9))
    results: list[tuple[float, int, int, float]] = []  # (seconds, status, batch, to 1st token)
    deadline = time.perf_counter() + duration

    def client() -> None:
        session = requests.Session()
        while time.perf_counter() < deadline:
            with lock:
                body = bodies[next(counter) % len(bodies)]
            start = time.perf_counter()
            try:
                status, batch, first = send(session, url, body, start)
            except (requests.RequestException, ValueError):
                status, batch, first = 0, 0, 0.0
            with lock:
                results.append((time.perf_counter() - start, status, batch, first))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summary(results, time.perf_counter() - start)


def summary(results: list[tuple[float, int, int, float]], wall: float) -> dict:
    ok = [(s, b, f) for s, status, b, f in results if status == 200]
    latency = np.array([s for s, _, _ in ok]) * 1000 if ok else np.zeros(1)
    first = np.array([f for _, _, f in ok]) * 1000 if ok else np.zeros(1)
    return {"requests": len(ok), "errors": len(results) - len(ok),
            "requests_per_second": len(ok) / wall,
            "p50_ms": float(np.percentile(latency, 50)),
            "p99_ms": float(np.percentile(latency, 99)),
            "ttft_p50_ms": float(np.percentile(first, 50)),
            "ttft_p99_ms": float(np.percentile(first, 99)),
            "mean_batch": float(np.mean([b for _, b, _ in ok])) if ok else 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(args: ServeArgs, bodies: list[dict], clients: int, duration: float,
            send=analyze_once) -> dict:
    """Deploy `args`, warm every clip up once, then run the closed loop."""
    import requests
    from ray import serve

    from emoverse.serving.app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name="emoverse-bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    try:
        for body in bodies:  # model loaded and clips processed before the clock starts
            requests.post(f"{url}/v1/analyze", json=body, timeout=120).raise_for_status()
        return closed_loop(url, bodies, clients, duration, send)
    finally:
        serve.shutdown()


def run(model: str | None = None, clients: int = 16, duration: float = 20.0,
        new_tokens: int = 16, demo_size: int = 40, workdir: str | None = None) -> dict:
    from emoverse.distributed.session import ensure_ray
    from emoverse.emt.demo import build_demo

    work = Path(workdir or tempfile.mkdtemp(prefix="emoverse-bench-serve-"))
    media = None  # a run's own media config
    if model is None:
        media = load_recipe("m2se-tiny").media  # what the tiny model is trained with
        from emoverse.model.tiny import write_tiny_model
        from emoverse.model.vocabulary import instruction_corpus

        log.info(f"writing the tiny model and demo clips under {work}")
        model = str(write_tiny_model(work / "model", instruction_corpus()))
    manifest = build_demo(work / "data", size=demo_size, seed=5)
    bodies = request_bodies(manifest, manifest.parent)
    ensure_ray()
    result = {"model": model, "clients": clients, "duration": duration,
              "new_tokens": new_tokens, "bodies": len(bodies)}
    for mode, batching, send in MODES:
        log.info(f"{mode}: {clients} clients for {duration:g}s")
        args = bench_args(model, manifest.parent, batching, clients, new_tokens, media)
        result[mode] = measure(args, bodies, clients, duration, send)
    result["ratio"] = result["on"]["requests_per_second"] / max(
        1e-9, result["off"]["requests_per_second"])
    result["stream_ratio"] = result["stream"]["requests_per_second"] / max(
        1e-9, result["on"]["requests_per_second"])
    return result


# (mode, dynamic batching, how a client sends a request)
MODES = (("off", False, analyze_once), ("on", True, analyze_once),
         ("stream", True, stream_once))


def report(r: dict) -> str:
    from tabulate import tabulate

    names = {"off": "analyze, batching off", "on": "analyze, batching on",
             "stream": "chat streamed, batching on"}
    rows = [[names[mode], r[mode]["requests"], f"{r[mode]['requests_per_second']:.1f}",
             f"{r[mode]['p50_ms']:.1f}", f"{r[mode]['p99_ms']:.1f}",
             f"{r[mode]['ttft_p50_ms']:.1f}", f"{r[mode]['ttft_p99_ms']:.1f}",
             r[mode]["errors"], f"{r[mode]['mean_batch']:.1f}"] for mode, _, _ in MODES]
    return "\n".join([
        f"closed loop: {r['clients']} clients x {r['duration']:g}s per mode over "
        f"{r['bodies']} demo rows (all five tasks), {r['new_tokens']} new tokens per answer at "
        f"most; model {r['model']}",
        tabulate(rows, headers=["mode", "requests", "req/s", "p50 ms", "p99 ms",
                                "first token p50", "p99", "errors", "mean batch"],
                 disable_numparse=True),
        f"throughput on/off = {r['ratio']:.2f}, stream/on = {r['stream_ratio']:.2f} "
        "(first token: the whole answer when not streamed)",
    ])
