"""`emoverse cluster up [cluster/local.yaml]`, `emoverse cluster status`, `emoverse cluster down`

A multi-node Ray cluster on one machine, to rehearse what runs on KubeRay: a head that
schedules no work and worker nodes with their own CPUs and custom resources (the layout
of `cluster/local.yaml`), token authentication on. Each node is a `ray start` of its own
with its own ports and temp dir, started in a new session so that `down` stops exactly
these processes: `ray stop` would stop every Ray process on the machine.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pydantic import Field

from emoverse.config_file import Strict, load_config

STATE_FILE = "cluster.json"
# The named ports a node would otherwise take at fixed defaults (52365, 10001, ...),
# which clash with any other Ray instance on the machine.
NODE_PORTS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "runtime-env-agent-port", "metrics-export-port", "node-manager-port",
              "object-manager-port")


class NodeSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    num_cpus: float = Field(ge=0)
    num_gpus: int = Field(0, ge=0)  # declared only: Ray schedules them, nothing checks
    resources: dict[str, float] = {}
    object_store_memory: int = Field(200 * 2**20, ge=78 * 2**20)  # Ray's minimum is 75 MiB


class LocalClusterSpec(Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9-]*$")
    head: NodeSpec
    workers: list[NodeSpec] = []
    dashboard_port: int | None = None  # None: a free port

    def expected_resources(self) -> dict[str, float]:
        """What the cluster should report in total (CPU, GPU and custom resources)."""
        total: dict[str, float] = {}
        for node in (self.head, *self.workers):
            for key, value in {"CPU": node.num_cpus, "GPU": node.num_gpus,
                               **node.resources}.items():
                total[key] = total.get(key, 0) + value
        return {k: v for k, v in total.items() if v}


def load_cluster_spec(path: str | Path) -> LocalClusterSpec:
    return load_config(path, LocalClusterSpec, "cluster")


_TAKEN: set[int] = set()


def _free_port() -> int:
    """A free port below Linux's ephemeral range (32768+), where the ports Ray's own
    processes pick at random come from, so they cannot take it before its node binds."""
    while True:
        port = random.randrange(20000, 32000)
        if port in _TAKEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _TAKEN.add(port)
        return port


def _ray_cli() -> str:
    # the `ray` next to this interpreter, so the nodes run the same Ray as the caller
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.is_file() else "ray"


def ensure_token(path: Path) -> Path:
    """The token file at `path`, written (owner-only) with a new random token if missing."""
    if not path.is_file() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path


def _node_args(node: NodeSpec, temp_dir: Path) -> list[str]:
    args = ["--num-cpus", f"{node.num_cpus:g}", "--num-gpus", str(node.num_gpus),
            "--resources", json.dumps(node.resources),
            "--object-store-memory", str(node.object_store_memory),
            "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir / node.name),
            # random worker ports instead of the shared default range 10002-19999
            "--min-worker-port", "0", "--max-worker-port", "0", "--disable-usage-stats"]
    for option in NODE_PORTS:
        args += [f"--{option}", str(_free_port())]
    return args


def _start_node(args: list[str], env: dict[str, str], log: Path) -> int:
    """Run one `ray start` in a new session; its session id names the node's processes."""
    with log.open("w") as out:
        proc = subprocess.Popen([_ray_cli(), "start", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        if proc.wait(timeout=180) != 0:
            _kill_sessions([proc.pid])
            raise RuntimeError(f"`ray start` failed (exit {proc.returncode}); see {log}:\n"
                               + log.read_text()[-2000:])
    return proc.pid


def up(spec: LocalClusterSpec, state_dir: str | Path, token_file: str | Path | None = None,
       timeout: float = 120.0) -> dict:
    """Start the head, then the workers, wait until every node is alive, write the state."""
    state_dir = Path(state_dir).resolve()
    if (state_dir / STATE_FILE).is_file():
        raise FileExistsError(f"{state_dir} already holds a running cluster: "
                              f"`emoverse cluster down --state-dir {state_dir}` first")
    state_dir.mkdir(parents=True, exist_ok=True)
    token = ensure_token(Path(token_file or state_dir / "auth_token").resolve())
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           # job drivers run `python`: the caller's, where emoverse is installed
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    env.pop("RAY_ADDRESS", None)  # `ray start --head` must not join another cluster
    temp_dir = state_dir / "ray"
    gcs_port, dashboard_port = _free_port(), spec.dashboard_port or _free_port()
    head_args = ["--head", "--port", str(gcs_port), "--dashboard-host", "127.0.0.1",
                 "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
                 "--ray-client-server-port", str(_free_port()), *_node_args(spec.head, temp_dir)]
    state = {"name": spec.name, "gcs_address": f"127.0.0.1:{gcs_port}",
             "dashboard_url": f"http://127.0.0.1:{dashboard_port}", "token_file": str(token),
             "sessions": [], "nodes": [spec.head.name, *(w.name for w in spec.workers)],
             "expected_resources": spec.expected_resources()}
    try:
        state["sessions"].append(_start_node(head_args, env, state_dir / "head.log"))
        for worker in spec.workers:
            args = ["--address", state["gcs_address"], *_node_args(worker, temp_dir)]
            state["sessions"].append(_start_node(args, env, state_dir / f"{worker.name}.log"))
        _wait_for_nodes(state, len(state["nodes"]), timeout)
    except BaseException:
        _kill_sessions(state["sessions"])
        raise
    (state_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def read_state(state_dir: str | Path) -> dict:
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no cluster started from {Path(state_dir).resolve()} "
                                f"(no {STATE_FILE}): `emoverse cluster up` first")
    return json.loads(path.read_text())


def alive_nodes(state: dict) -> list[dict]:
    """The cluster's alive nodes from the dashboard's state API (token sent)."""
    import requests

    token = Path(state["token_file"]).read_text().strip()
    r = requests.get(f"{state['dashboard_url']}/api/v0/nodes",
                     params={"detail": "1", "limit": "1000"},
                     headers={"Authorization": f"Bearer {token}"}, timeout=10)
    r.raise_for_status()
    nodes = r.json()["data"]["result"]["result"]
    return [n for n in nodes if n["state"] == "ALIVE"]


def _wait_for_nodes(state: dict, count: int, timeout: float) -> None:
    import requests

    deadline, seen = time.time() + timeout, 0
    while time.time() < deadline:
        try:
            seen = len(alive_nodes(state))
            if seen >= count:
                return
        except (requests.RequestException, KeyError):
            pass  # the dashboard is still starting
        time.sleep(1)
    raise TimeoutError(f"{seen} of {count} Ray nodes came up within {timeout:.0f}s")


def _session_processes(sid: int) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def _kill_sessions(sessions: list[int], grace: float = 5.0) -> int:
    """SIGTERM every process of these sessions, SIGKILL what is left after `grace` s;
    again until none is left (a dying raylet may still start a worker)."""
    import psutil

    stopped = 0
    for _ in range(5):
        procs = [p for sid in sessions for p in _session_processes(sid)]
        if not procs:
            break
        stopped += len(procs)
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace)
        for proc in alive:  # the GCS, for one, takes its time over SIGTERM
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=grace)
    return stopped


def down(state_dir: str | Path) -> int:
    """Stop every process of the cluster started from `state_dir`; the number stopped."""
    state = read_state(state_dir)
    stopped = _kill_sessions(state["sessions"])
    (Path(state_dir) / STATE_FILE).unlink()
    return stopped
