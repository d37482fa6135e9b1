"""docs/ as a newcomer follows it: the worked example of docs/adding_a_feature.md runs as
written, and the commands of docs/operations.md do what the page says.

The worked example changes code, so it runs in a scratch clone of the repository (HEAD plus
this working tree's changes, never the working tree itself), against a Redis of its own (a
free port, its own folder) and the shared test MLflow. Its "make demo" state is made small:
14 days of generated history (plus a few hand-made transactions whose feature values are
known) and the unchanged batch job run once. Then every shell command of the page runs in
page order, as written; only ports and data folders differ, through the TESSERA__
environment overrides every command reads (and curl's port, rewritten to the test's API).
Long-running commands (the stream, the API) run in the background as in terminals of their
own, and so do the page's test run and `feast apply`, beside the steps after them.
Then operations.md's commands run, in order, on the state the example left.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from jobs import batch_features, generate_events
from plumbing import services, tracking
from plumbing.config import REPO_ROOT, load_config
from tests.doc_commands import bash_commands, fenced_blocks, words

DOCS = REPO_ROOT / "docs"
EXAMPLE = DOCS / "adding_a_feature.md"
OPERATIONS = DOCS / "operations.md"
PATCH = DOCS / "examples" / "txn_amount_min_24h.patch"
TABLE = "user_transaction_features"
NEW_FEATURE = "txn_amount_min_24h"
DOC_API = "localhost:8010"  # where the page's curl asks; rewritten to the test's API port
# Users of our own, absent from the generated history: their values are worked out by hand.
HAND_USER = "u_docs_example"
QUIET_USER = "u_docs_quiet"  # one transaction in the history, none live
# Commands of the page that end by themselves, run beside the next steps: nothing after
# them needs their result before the end, and the machine has two cores to share.
ONE_SHOT_BESIDE = ("pytest", "feast apply")
WAIT_S = 300  # per wait on a background command: generous, the machine is shared


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _git(*args: str, cwd: Path = REPO_ROOT, stdin: str | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


def scratch_clone(dest: Path) -> Path:
    """A clone of HEAD with this working tree's changes and new files on top: what the docs
    describe is what is checked out now, committed or not. The venv and the fetched jars are
    shared (symlinks)."""
    _git("clone", "-q", str(REPO_ROOT), str(dest))
    changes = _git("diff", "HEAD", "--binary")
    if changes:
        _git("apply", "--whitespace=nowarn", cwd=dest, stdin=changes)
    for relative in _git("ls-files", "--others", "--exclude-standard", "-z").split("\0"):
        if relative:
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / relative, dest / relative)
    (dest / ".venv").symlink_to(REPO_ROOT / ".venv")
    (dest / ".jars").symlink_to(REPO_ROOT / ".jars")  # plumbing.spark finds them beside the code
    return dest


# ---- the page and its patch ------------------------------------------------------------------
def test_the_diff_blocks_are_the_patch_file_and_it_applies_to_this_tree(tmp_path):
    text = EXAMPLE.read_text()
    # The page shows the patch file block by block: the two cannot drift apart.
    assert "".join(fenced_blocks(text, "diff")) == PATCH.read_text()
    changed = re.findall(r"(?m)^diff --git a/(\S+)", PATCH.read_text())
    assert changed == ["transformations/user_transactions.py", "transformations/catalog.py",
                       "tests/test_transformations_user_transactions.py"]
    # The patch fits the files as they are now (apply --check changes nothing).
    for path in changed:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / path, tmp_path / path)
    _git("apply", "--check", str(PATCH), cwd=tmp_path)


def test_the_page_runs_only_commands_this_module_knows_how_to_run():
    commands = bash_commands(EXAMPLE.read_text())
    assert [_step_of(command) for command in commands] == [
        "apply", "pytest", "feast apply", "batch-features", "stream-features", "generate live", "serve", "curl"]


def _step_of(command: str) -> str:
    argv = words(command)
    if argv[:2] == ["git", "apply"]:
        return "apply"
    if argv[0] == ".venv/bin/pytest":
        return "pytest"
    if argv[0] == ".venv/bin/tessera":
        return " ".join(argv[1:3]) if argv[1] in ("feast", "generate") else argv[1]
    return argv[0]


# ---- the worked example, end to end --------------------------------------------------------
def _hand_made_transactions(schema: pa.Schema, day: date) -> pa.Table:
    """Three transactions of HAND_USER, typed as the generator types them: at 10:00 (30.0),
    11:00 (12.5) and 11:00 the next day (70.0). Minimum over (t - 24h, t]: 30.0, 12.5, and
    70.0 (the 11:00 event is exactly 24 h before the last one, so out). And one of
    QUIET_USER, at 10:00."""
    first = datetime(day.year, day.month, day.day, 10, tzinfo=timezone.utc)
    times = [first, first + timedelta(hours=1), first + timedelta(hours=25), first]
    rows = {"transaction_id": [f"docs-hist-{i}" for i in range(4)], "user_id": [HAND_USER] * 3 + [QUIET_USER],
            "merchant_id": ["m00001"] * 4, "amount": [30.0, 12.5, 70.0, 5.0], "currency": ["EUR"] * 4,
            "country": ["DE"] * 4, "device_id": ["d-docs"] * 4, "channel": ["web"] * 4, "event_time": times}
    return pa.table({name: pa.array(rows[name]).cast(schema.field(name).type) for name in schema.names})


def _land_hand_made_events(landing: Path) -> None:
    """Two live transactions of HAND_USER, 60 s and 30 s ago (8.0, then 99.0): its 24-hour
    window then holds these two only (its history ends days earlier): minimum 8.0."""
    now = datetime.now(timezone.utc)
    lines = [json.dumps({"transaction_id": f"docs-live-{i}", "user_id": HAND_USER, "merchant_id": "m00001",
                         "amount": amount, "currency": "EUR", "country": "DE", "device_id": "d-docs",
                         "channel": "web", "event_time": (now - timedelta(seconds=ago)).isoformat()})
             for i, (ago, amount) in enumerate([(60, 8.0), (30, 99.0)])]
    folder = landing / "transactions"
    folder.mkdir(parents=True, exist_ok=True)
    staged = landing / "docs-example.jsonl.tmp"  # outside the watched folder: the stream sees whole files
    staged.write_text("\n".join(lines) + "\n")
    staged.rename(folder / "docs-example.jsonl")


def _features(api_port: int, refs: list[str], user: str) -> dict:
    body = json.dumps({"features": refs, "entities": [{"user_id": user}]}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{api_port}/v1/features", data=body,
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def _services(processes: dict[str, subprocess.Popen]) -> dict[str, subprocess.Popen]:
    """The background commands that must keep running: the stream and the API."""
    return {name: process for name, process in processes.items() if name not in ONE_SHOT_BESIDE}


def _wait_for(check, what: str, processes: dict[str, subprocess.Popen], logs: Path):
    """``check()``'s first truthy answer; fails after WAIT_S, or at once when a background
    command has died, with the logs."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode} while waiting for {what}:\n"
                            + (logs / f"{name}.log").read_text()[-4000:])
        try:
            answer = check()
        except (OSError, ValueError):  # the API not listening yet, or an answer not ready
            answer = None
        if answer:
            return answer
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}:\n" + "\n".join(
        (logs / f"{name}.log").read_text()[-3000:] for name in processes))


@pytest.fixture()
def example_env(local_services, tmp_path):
    """The scratch clone, an isolated Redis, and the environment of the page's commands."""
    clone = scratch_clone(tmp_path / "repo")
    data_dir, redis_port, api_port = tmp_path / "data", _free_port(), _free_port()
    # The file source: the page's events land in a folder of this test's own (the profile's
    # default, Kafka, would share the broker's topics with every other run).
    overrides = {"TESSERA__DATA_DIR": str(data_dir), "TESSERA__REDIS__PORT": str(redis_port),
                 "TESSERA__SERVING__PORT": str(api_port), "TESSERA__EVENTS__SOURCE": "files"}
    cfg = load_config("local", environ={**os.environ, **overrides})
    services.up(cfg, only=["redis"])
    env = {**os.environ, **overrides,
           "TESSERA_PROFILE": "local",
           cfg.redis.password_env: cfg.redis_password(),
           # The clone's packages, not the working tree's (the venv's editable install points there).
           "PYTHONPATH": str(clone),
           "PYSPARK_PYTHON": sys.executable,
           # Small JVMs: several Spark processes share this machine with other work.
           "TESSERA__SPARK__DRIVER_MEMORY": "1g", "TESSERA__SPARK__MASTER": "local[2]"}
    try:
        yield clone, cfg, env, api_port
    finally:
        services.down(cfg, only=["redis"])


@pytest.mark.e2e
def test_adding_a_feature_then_operations_run_as_written(example_env, spark, tmp_path):
    clone, cfg, env, api_port = example_env
    began = time.monotonic()
    logs = tmp_path / "logs"
    logs.mkdir()
    today = datetime.now(timezone.utc).date()
    start, end = today - timedelta(days=14), today  # what the page's $(date ...) computes
    hand_day = today - timedelta(days=5)

    # "make demo" already ran, small: a history, the hand-made transactions, the old table.
    generate_events.generate_history(cfg.events.history_uri, events=1500, days=14, start_date=start, seed=11,
                                     partition_by_date=True, progress=False)
    history = Path(cfg.events.history_uri) / "transactions"
    schema = pq.read_schema(next(history.rglob("*.parquet")))
    hand_folder = history / f"date={hand_day.isoformat()}"
    hand_folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(_hand_made_transactions(schema, hand_day), hand_folder / "docs-hand-made.parquet")
    # The unchanged job (this process runs the working tree's code = the clone before the patch).
    before = batch_features.run(cfg, start, end, tables=[TABLE], spark=spark)
    assert before[0].published
    lake_uri = f"{cfg.lake.root}/{TABLE}"
    old_version = DeltaTable(lake_uri).version()
    assert NEW_FEATURE not in DeltaTable(lake_uri).schema().to_arrow().names

    processes: dict[str, subprocess.Popen] = {}
    seconds: dict[str, float] = {"setup": time.monotonic() - began}
    try:
        for command in bash_commands(EXAMPLE.read_text()):
            step, step_began = _step_of(command), time.monotonic()
            if step in ("stream-features", "serve", *ONE_SHOT_BESIDE):
                # Long-running ones in the background, as in a terminal of their own; the
                # page's tests and the Feast registry too, beside the next steps, which do
                # not depend on them (checked below, once they end).
                log = (logs / f"{step}.log").open("w")
                processes[step] = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=clone, env=env,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
                continue
            if step == "curl":
                _check_curl(command, api_port, _services(processes), logs, env)
                seconds[step] = time.monotonic() - step_began
                continue
            done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                                  timeout=900)
            output = done.stdout + done.stderr
            seconds[step] = time.monotonic() - step_began
            assert done.returncode == 0, f"{command}\n{output[-4000:]}"
            if step == "batch-features":
                assert re.search(rf"{TABLE}\s+[\d,]+ rows\s+published as version \d+", output), output[-2000:]
                _check_backfill(cfg, lake_uri, old_version)
            elif step == "generate live":
                _land_hand_made_events(Path(cfg.events.landing_dir))

        # The page's chispa tests (started in the background above): the new one and the changed one.
        assert processes["pytest"].wait(timeout=900) == 0, (logs / "pytest.log").read_text()[-4000:]
        assert re.search(r"\b2 passed\b", (logs / "pytest.log").read_text()), (logs / "pytest.log").read_text()
        # `feast apply` (also in the background) registered the new field.
        assert processes["feast apply"].wait(timeout=900) == 0, (logs / "feast apply.log").read_text()[-4000:]
        _check_feast_registry(cfg)

        # The stream wrote the hand-made user's newest row with the new code: values by hand.
        refs = [f"{TABLE}:{name}" for name in (NEW_FEATURE, "txn_count_24h", "txn_lifetime_count")]

        def hand_made_row_online() -> dict | None:  # the stream's row: two transactions in 24 h
            answer = _features(api_port, refs, HAND_USER)
            result = answer["results"][0]
            return answer if result["statuses"][0] == "present" and result["values"][1] == 2 else None

        hand = _wait_for(hand_made_row_online, f"{HAND_USER}'s new feature online", _services(processes), logs)
        # 8.0 and 99.0 in the last 24 h; its lifetime: 3 history transactions (from bronze) + 2.
        assert hand["results"][0]["values"] == [8.0, 2, 5]
        # What step 4 says: a user whose row Redis already held (same event time) has the new
        # field at once, from the backfill (its one transaction: 5.0).
        quiet = _features(api_port, refs[:2], QUIET_USER)["results"][0]
        assert quiet["statuses"] == ["present", "present"] and quiet["values"] == [5.0, 1]
        seconds["worked example"] = time.monotonic() - began

        # docs/operations.md, right after: the table's versions, a report, a rollback, a key rotation.
        operations_began = time.monotonic()
        _run_operations_page(clone, env, cfg, processes, logs, api_port, lake_uri)
        seconds["operations"] = time.monotonic() - operations_began
    finally:
        stopped = {}
        for name, process in processes.items():
            if process.poll() is None:
                # As docs/operations.md says to stop them, to the command itself (not its
                # group: the Spark JVM is stopped by the job): the stream with Ctrl-C
                # (SIGINT, which PySpark also handles), the others with `kill <pid>` (SIGTERM).
                process.send_signal(signal.SIGINT if name == "stream-features" else signal.SIGTERM)
            try:
                stopped[name] = process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                stopped[name] = process.wait()
        print("seconds per step:", {step: round(value) for step, value in seconds.items()})
    # A clean stop: the stream exits 0 on Ctrl-C.
    assert stopped.get("stream-features") == 0, (logs / "stream-features.log").read_text()[-3000:]


def _check_feast_registry(cfg) -> None:
    from feast import FeatureStore

    store = FeatureStore(repo_path=str(REPO_ROOT / "feature_repo"),
                         fs_yaml_file=cfg.data_dir / "feast" / "feature_store.yaml")
    fields = {field.name: str(field.dtype) for field in store.get_feature_view(TABLE).features}
    assert fields.get(NEW_FEATURE) == "Float64", fields


def _check_backfill(cfg, lake_uri: str, old_version: int) -> None:
    table = DeltaTable(lake_uri)
    # Schema evolution: the column was added by new commits; the old version is unchanged.
    assert table.version() > old_version
    assert NEW_FEATURE in table.schema().to_arrow().names
    assert NEW_FEATURE not in DeltaTable(lake_uri, version=old_version).schema().to_arrow().names
    rows = table.to_pandas(columns=["user_id", "event_timestamp", NEW_FEATURE])
    hand = rows[rows["user_id"] == HAND_USER].sort_values("event_timestamp")
    assert hand[NEW_FEATURE].tolist() == [30.0, 12.5, 70.0]
    # Every row of the range has it: an amount is always known in generated transactions.
    assert len(rows) > 50 and rows[NEW_FEATURE].notna().all()
    # The MLflow run of the new version records the new schema.
    runs = tracking.find_runs(cfg, TABLE, delta_version=table.version())
    assert runs and runs[0].info.status == "FINISHED"
    assert NEW_FEATURE in runs[0].data.tags["schema"]


def _check_curl(command: str, api_port: int, processes, logs: Path, env) -> None:
    """The page's curl, as written but for the port, until the stream has written u000001's
    new row: both values present, the minimum at most the maximum."""
    assert DOC_API in command
    local = command.replace(DOC_API, f"localhost:{api_port}")

    def answer():
        done = subprocess.run(["bash", "-c", local], capture_output=True, text=True, env=env, timeout=30)
        if done.returncode != 0 or not done.stdout:
            return None
        reply = json.loads(done.stdout)
        result = reply["results"][0]
        return reply if result["statuses"] == ["present", "present"] else None

    reply = _wait_for(answer, "u000001's new feature online", processes, logs)
    assert reply["features"] == [f"{TABLE}:{NEW_FEATURE}", f"{TABLE}:txn_amount_max_24h"]
    minimum, maximum = reply["results"][0]["values"]
    assert 0 < minimum <= maximum


# ---- docs/operations.md ------------------------------------------------------------------
def _stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()  # SIGTERM: the page's way to stop the API and the stream
        process.wait(timeout=120)


def _run_operations_page(clone: Path, env: dict[str, str], cfg, processes: dict[str, subprocess.Popen],
                         logs: Path, api_port: int, lake_uri: str) -> None:
    """Every command of the page in order, as written (ports rewritten), on the state the
    worked example left: versions 0 (before) and 1 (the backfill, which adds the column in its commit)."""
    env = dict(env)  # the page's exports stay on this page
    runs = {version: tracking.find_runs(cfg, TABLE, delta_version=version)[0].info.run_id for version in (0, 1)}
    for command in bash_commands(OPERATIONS.read_text()):
        argv = words(command)
        if argv[0] == "export":
            name, _, value = argv[1].partition("=")
            env[name] = value
            continue
        if argv[:2] == [".venv/bin/tessera", "serve"]:  # a restart: stop the running API first
            _stop(processes.pop("serve", None))
            log = (logs / "serve.log").open("a")
            processes["serve"] = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=clone, env=env,
                                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            continue
        if argv[0] == "curl":
            expected = re.search(r"#\s*(\d{3})\s*$", command).group(1)  # the status the page promises
            local = command.replace(DOC_API, f"localhost:{api_port}")

            def status(local: str = local) -> str | None:  # bound now: B023
                done = subprocess.run(["bash", "-c", local], capture_output=True, text=True, env=env, timeout=30)
                code = done.stdout.strip()
                return None if code in ("", "000") else code  # 000: the restarted API not listening yet

            assert _wait_for(status, "the API after its restart", {"serve": processes["serve"]}, logs) == expected, \
                command
            continue
        done = subprocess.run(["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=300)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{command}\n{output[-3000:]}"
        action = argv[2]
        if action == "history":
            versions = [int(line.split()[0]) for line in done.stdout.splitlines()[1:]]
            assert versions == [1, 0], done.stdout
            lines = done.stdout.splitlines()[1:]
            assert lines[0].split()[-1] == runs[1] and lines[1].split()[-1] == runs[0], done.stdout
        elif action == "report":
            assert f"validation report of run {runs[0]}" in done.stdout, done.stdout
            docs = Path(re.search(r"data docs: (\S+)", done.stdout).group(1))
            assert docs.is_file() and docs.stat().st_size > 0
            assert "failed expectations: none" in done.stdout
        elif action == "rollback":
            assert f"{TABLE}: version 2 restores version 0" in done.stdout, done.stdout
            table = DeltaTable(lake_uri)
            assert table.version() == 2 and table.history(1)[0]["operation"] == "RESTORE"
            assert NEW_FEATURE not in table.schema().to_arrow().names
            assert NEW_FEATURE in DeltaTable(lake_uri, version=1).schema().to_arrow().names  # still readable
        else:
            pytest.fail(f"operations.md: a command this test does not check: {command}")
