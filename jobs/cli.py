"""`tessera`: the one console command. Each subcommand is a job or a service action.

    tessera [--profile local|s3|PATH] <command> [options]

Jobs keep their own argument parsers (they are also run with `spark-submit jobs/X.py`
and `python -m jobs.X`); this module only routes to them, so `tessera X --help` shows
the job's own help.
"""
from __future__ import annotations

import argparse
import importlib
import os
import subprocess
import sys

from plumbing.config import PROFILE_ENV, REPO_ROOT, ConfigError, add_profile_option, load_config
from plumbing.services import SERVICE_NAMES, ServiceError

# subcommand -> (module with main(argv), one-line help)
JOBS = {
    "generate": ("jobs.generate_events", "generate raw events: history (Parquet) "
                                         "or live (JSON lines to Kafka or the landing folder)"),
    "ingest": ("jobs.ingest", "bring an export (CSV, Parquet, JSON lines) into the raw history "
                              "with a column mapping; malformed rows to dead letters"),
    "batch-features": ("jobs.batch_features", "compute, validate, publish and track the feature tables"),
    "feast": ("plumbing.feast_repo", "the Feast registry of the profile: apply, materialize, serve; "
                                     "ui: the feature catalog in Feast's web UI"),
    "stream-features": ("jobs.stream_features", "Structured Streaming from Kafka (or the landing folder) "
                                                "to Redis (and dead letters)"),
    "consistency-check": ("jobs.consistency_check", "compare Redis with the batch values as of the same cut-off"),
    "table": ("jobs.lake_tables", "a Delta table's versions and MLflow runs, rollback, validation report"),
    "skew-check": ("jobs.skew_check", "served features against the champion's training set, feature by feature"),
    "train": ("jobs.train_model", "build a point-in-time training set, train, evaluate, register the fraud model"),
    "serve": ("serving.app", "the HTTP API: online features and model scores (uvicorn)"),
    "demo": ("jobs.demo", "run the whole pipeline on the embedded default and print what it did"),
    "screenshots": ("jobs.screenshots", "check the API docs, Feast UI and MLflow pages in Chromium; "
                                        "images to docs/images"),
}
SERVICE_ACTIONS = {"up": "start the local services (idempotent)",
                   "down": "stop the local services; leaves no process behind",
                   "status": "show the local services and their health"}
SCRIPTS = {"test": "run the test suite", "bench": "run the benchmarks"}
# Every subcommand, in the order of the help: main splits the command line at the first of them.
COMMANDS = [*SERVICE_ACTIONS, *JOBS, *SCRIPTS]


def _service_command(action: str, argv: list[str]) -> int:
    from plumbing import services

    parser = argparse.ArgumentParser(prog=f"tessera {action}",
                                     description=f"{action} the local services of the active profile "
                                                 "(Redis, S3 endpoint, MLflow server).")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SERVICE_NAMES)}")
    args = parser.parse_args(argv)
    only = [name for name in args.only.split(",") if name] or None
    cfg = load_config()
    if action == "status":
        statuses = services.status(cfg, only)
        for st in statuses:
            print(st.line())
        return 0 if all(st.healthy or not st.enabled for st in statuses) else 3
    lines = services.up(cfg, only) if action == "up" else services.down(cfg, only)
    for line in lines:
        print(line)
    if action == "up":
        print(f"profile {cfg.profile}: MLflow UI at {cfg.mlflow.tracking_uri}, "
              f"Redis at {cfg.redis.host}:{cfg.redis.port}")
    return 0


def _feast_ui_command(argv: list[str]) -> int:
    """`tessera feast ui`: Feast's web UI in the background, a service of the profile."""
    import feature_repo
    from plumbing import feast_repo, services

    parser = argparse.ArgumentParser(
        prog="tessera feast ui",
        description="Start Feast's web UI (feature views, features, services, their sources) on the profile's "
                    "registry, on 127.0.0.1, in the background: `tessera status` lists it, "
                    "`tessera down` (or `down --only feast-ui`) stops it. Applies feature_repo/ first when "
                    "the profile has no registry yet.")
    add_profile_option(parser)
    parser.add_argument("--port", type=int, default=services.FeastUiService.DEFAULT_PORT,
                        help=f"port to listen on (default {services.FeastUiService.DEFAULT_PORT})")
    args = parser.parse_args(argv)
    cfg = load_config(args.profile)
    if not (feast_repo.feast_dir(cfg) / "registry.db").exists():
        print(f"feast-ui: no registry in {feast_repo.feast_dir(cfg)} yet: applying feature_repo/", flush=True)
        feature_repo.apply(cfg)
    print(services.feast_ui_up(cfg, args.port))
    print(f"feature catalog (Feast UI) at http://{services.FeastUiService.host}:{args.port}")
    return 0


def _script_command(name: str, argv: list[str]) -> int:
    """`tessera test` and `tessera bench` run the same scripts as `make test` / `make bench`."""
    parser = argparse.ArgumentParser(
        prog=f"tessera {name}",
        description={"test": "run the test suite (pytest; extra arguments go to pytest)",
                     "bench": "run every benchmark in bench/ and refresh bench/results"}[name])
    # Every argument goes through, options included (`tessera test -m unit --durations=0`);
    # only a lone -h/--help is this command's own.
    if argv in (["-h"], ["--help"]):
        parser.print_help()
        return 0
    if name == "test":
        command = [sys.executable, "-m", "pytest", *argv]
    else:
        command = [sys.executable, str(REPO_ROOT / "bench" / "run_all.py"), *argv]
    return subprocess.call(command, cwd=REPO_ROOT)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tessera",
        description="Tessera feature platform: features computed once with PySpark, stored in Delta "
                    "Lake (offline) and Redis (online), validated, versioned and served.")
    parser.add_argument("--profile", help=f"config profile name in conf/ or a YAML path "
                                           f"(default: ${PROFILE_ENV} or 'local')")
    sub = parser.add_subparsers(dest="command", metavar="command")
    helps = {**SERVICE_ACTIONS, **{name: text for name, (_, text) in JOBS.items()}, **SCRIPTS}
    for name in COMMANDS:
        # No options of its own: the rest of the line goes to the command's own parser.
        sub.add_parser(name, help=helps[name], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Split at the subcommand: options before it are ours, the rest belong to it.
    split = next((i for i, arg in enumerate(argv) if arg in COMMANDS), len(argv))
    args = parser.parse_args(argv[: split + 1])
    rest = argv[split + 1:]
    if args.profile:
        os.environ[PROFILE_ENV] = args.profile
    if not args.command:
        parser.error(f"a command is required, one of: {', '.join(COMMANDS)} (tessera --help says what each does)")
    try:
        if args.command in ("up", "down", "status"):
            return _service_command(args.command, rest)
        if args.command in ("test", "bench"):
            return _script_command(args.command, rest)
        if args.command == "feast" and rest[:1] == ["ui"]:
            return _feast_ui_command(rest[1:])
        module = importlib.import_module(JOBS[args.command][0])
        return int(module.main(rest) or 0)
    except (ConfigError, ServiceError) as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
