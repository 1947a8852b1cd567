"""`emoverse submit JOB.yaml --address URL`, `emoverse job ...` and `emoverse cluster ...`."""

from __future__ import annotations

import argparse
import os
import sys

from emoverse.console import logger

log = logger(__name__)

DEFAULT_STATE_DIR = "/tmp/emoverse-cluster"  # short: Ray's socket paths live under it


def _client(args):
    from emoverse.distributed.jobs import connect
    from emoverse.submission import find_token

    if not args.address:
        raise ValueError("give --address URL (the Ray dashboard, e.g. http://127.0.0.1:8265) "
                         "or set RAY_API_SERVER_ADDRESS")
    return connect(args.address, find_token(args.token_file))


def _finish(outcome) -> int:
    log.info(f"job {outcome.submission_id}: {outcome.status}"
             + (f" ({outcome.message})" if outcome.message else ""))
    return 0 if outcome.status == "SUCCEEDED" else 1


def _jobs_errors(handler):
    def run(args) -> int:
        from emoverse.distributed.jobs import JobsError

        try:
            return handler(args)
        except JobsError as exc:
            print(f"emoverse: error: {exc}", file=sys.stderr)
            return 2
    return run


@_jobs_errors
def _submit(args) -> int:
    from emoverse.distributed.jobs import follow, submit
    from emoverse.submission import load_job, parse_env, prepare_submission

    spec = load_job(args.job)  # a bad job file fails before any connection
    submission = prepare_submission(spec, args.job, args=args.entrypoint_args,
                                    env=parse_env(args.env),
                                    upload=not args.no_working_dir,
                                    submission_id=args.submission_id)
    client = _client(args)
    submission_id = submit(client, submission)
    log.info(f"submitted {submission_id} to {args.address}: {submission.entrypoint}")
    if args.no_follow:
        log.info(f"follow it with: emoverse job follow {submission_id} "
                 f"--address {args.address}")
        return 0
    try:
        return _finish(follow(client, submission_id))
    except KeyboardInterrupt:
        log.info(f"stopped following; the job goes on. Stop it with: "
                 f"emoverse job stop {submission_id} --address {args.address}")
        return 130


@_jobs_errors
def _job(args) -> int:
    from emoverse.distributed.jobs import follow, status, stop

    client = _client(args)
    if args.job_command == "follow":
        return _finish(follow(client, args.submission_id))
    if args.job_command == "stop":
        log.info(f"stop requested: {stop(client, args.submission_id)}")
        return 0
    return _finish(status(client, args.submission_id))


def _cluster(args) -> int:
    from emoverse.distributed import local_cluster
    from emoverse.submission import DEFAULT_TOKEN_FILE

    if args.cluster_command == "up":
        spec = local_cluster.load_cluster_spec(args.spec)
        state = local_cluster.up(spec, args.state_dir, args.token_file or DEFAULT_TOKEN_FILE)
        log.info(f"{spec.name}: {len(state['nodes'])} nodes up; dashboard "
                 f"{state['dashboard_url']}, GCS {state['gcs_address']}, token "
                 f"{state['token_file']}")
        log.info(f"submit with: emoverse submit jobs/quickstart.yaml --address "
                 f"{state['dashboard_url']} --token-file {state['token_file']}")
        return 0
    if args.cluster_command == "down":
        log.info(f"stopped {local_cluster.down(args.state_dir)} processes")
        return 0
    state = local_cluster.read_state(args.state_dir)
    if args.cluster_command == "address":
        print(state["dashboard_url"])
        return 0
    for node in sorted(local_cluster.alive_nodes(state), key=lambda n: not n["is_head_node"]):
        resources = {k: v for k, v in node["resources_total"].items()
                     if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        print(f"{'head  ' if node['is_head_node'] else 'worker'} {node['node_id'][:12]} "
              f"{resources}")
    return 0


def _connection_options(parser) -> None:
    parser.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS"),
                        help="the Ray dashboard's URL, e.g. http://127.0.0.1:8265 "
                             "(default: $RAY_API_SERVER_ADDRESS)")
    parser.add_argument("--token-file", help="file holding the cluster's auth token (default: "
                                             "$RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, then "
                                             "~/.ray/auth_token, as Ray's own clients)")


def register(sub) -> None:
    sm = sub.add_parser(
        "submit", help="submit a job file (jobs/*.yaml) to a Ray cluster and follow it",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Submit a job file to a running Ray cluster through the Ray Jobs API, "
                    "print its logs as they come and exit with its status (0 when it "
                    "SUCCEEDED). The job's working_dir (this checkout) is uploaded unless "
                    "--no-working-dir, which runs the package installed in the cluster's "
                    "image. Token authentication (on by default in Ray 2.60) is handled "
                    "here: the token is sent as a bearer header.",
        epilog="example:\n  emoverse submit jobs/quickstart.yaml --address "
               "http://127.0.0.1:8265\n  emoverse submit jobs/train.yaml --address URL "
               "-- scaling.num_workers=8")
    sm.add_argument("job", help="job file, e.g. jobs/quickstart.yaml")
    sm.add_argument("entrypoint_args", nargs="*", metavar="ARG",
                    help="appended to the entrypoint after `--` (later options and KEY=VALUE "
                         "recipe overrides win)")
    _connection_options(sm)
    sm.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                    help="add to the job's environment, e.g. EMOVERSE_RUNS=/mnt/runs "
                         "(repeatable)")
    sm.add_argument("--submission-id", help="default: <job name>-<time>")
    sm.add_argument("--no-working-dir", action="store_true",
                    help="upload nothing: run the emoverse installed in the cluster's image")
    sm.add_argument("--no-follow", action="store_true",
                    help="return once submitted instead of following the logs")
    sm.set_defaults(func=_submit)

    job = sub.add_parser("job", help="follow, inspect or stop a submitted job",
                         description="Follow (logs to the end), print the status of, or stop "
                                     "a job submitted with `emoverse submit`.")
    actions = job.add_subparsers(dest="job_command", metavar="ACTION", required=True)
    for name, text in (("follow", "print the job's logs until it ends; exit with its status"),
                       ("status", "print the job's status; exit 0 only if it SUCCEEDED"),
                       ("stop", "ask the cluster to stop the job")):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("submission_id")
        _connection_options(action)
    job.set_defaults(func=_job)

    cl = sub.add_parser(
        "cluster", help="a local multi-node Ray cluster to rehearse deployments",
        description="Start (up), inspect (status, address) or stop (down) a multi-node Ray "
                    "cluster on this machine: a head and worker nodes with their own CPUs and "
                    "resources, as cluster/local.yaml lays out, token auth on. `down` stops "
                    "only this cluster's processes.")
    actions = cl.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start the cluster", description="start the cluster")
    up.add_argument("spec", nargs="?", default="cluster/local.yaml",
                    help="node layout (default: cluster/local.yaml)")
    up.add_argument("--token-file", help="token file, created if missing (default: Ray's own, "
                                         "~/.ray/auth_token)")
    for name, text in (("up", None), ("status", "list the alive nodes and their resources"),
                       ("address", "print the dashboard URL (for --address)"),
                       ("down", "stop this cluster's processes")):
        action = up if name == "up" else actions.add_parser(name, help=text, description=text)
        action.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                            help=f"where the cluster keeps its state, logs and Ray temp dirs "
                                 f"(default {DEFAULT_STATE_DIR})")
    cl.set_defaults(func=_cluster)
