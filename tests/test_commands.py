"""Every command with bad arguments ends with exit code 2 and a short message, never a traceback.

The jobs' ``main(argv)`` functions are what ``python -m jobs.<x>``, ``spark-submit jobs/<x>.py``
and ``tessera <command>`` run (jobs/cli.py only routes), so they are called here in the test's
process: each case must be refused before any work starts (no Spark session, no service).
One case runs the real console script, to check the process's own exit code and stderr.
``tessera test`` is not here: every argument after it is pytest's own.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cli
from plumbing.config import REPO_ROOT

A_DAY, THE_DAY_BEFORE = "2026-12-03", "2026-11-01"
EXAMPLE_MAPPING = REPO_ROOT / "docs" / "examples" / "ingest_transactions.yaml"
README = REPO_ROOT / "README.md"  # not a mapping

# (module whose main(argv) runs, argv): "jobs.cli" is the console command itself.
CASES = [
    ("jobs.cli", []),
    ("jobs.cli", ["no-such-command"]),
    ("jobs.cli", ["--no-such-option"]),
    ("jobs.cli", ["up", "--no-such-option"]),
    ("jobs.cli", ["down", "--only", "redis,no-such-service"]),
    ("jobs.cli", ["status", "--only", "no-such-service"]),
    ("jobs.cli", ["feast", "ui", "--port", "not-a-port"]),
    ("jobs.cli", ["--profile", "no-such-profile", "status"]),
    ("jobs.generate_events", []),
    ("jobs.generate_events", ["history", "--events", "-1"]),
    ("jobs.generate_events", ["live", "--start-time", "yesterday"]),
    ("jobs.batch_features", ["--start", A_DAY, "--end", THE_DAY_BEFORE]),
    ("jobs.batch_features", ["--start", "2026-13-01", "--end", A_DAY]),
    ("jobs.batch_features", ["--start", THE_DAY_BEFORE, "--end", A_DAY, "--tables", "no_such_table"]),
    ("jobs.batch_features", ["--start", THE_DAY_BEFORE, "--end", A_DAY, "--profile", "no-such-profile"]),
    ("jobs.ingest", []),
    ("jobs.ingest", ["no_such_events", "export.csv", "--mapping", str(EXAMPLE_MAPPING)]),
    ("jobs.ingest", ["transactions", "export.csv"]),
    ("jobs.ingest", ["transactions", "export.csv", "--mapping", "no-such-mapping.yaml"]),
    ("jobs.ingest", ["activity", "export.csv", "--mapping", str(EXAMPLE_MAPPING)]),
    ("jobs.ingest", ["transactions", "export.txt", "--mapping", str(README)]),
    ("jobs.ingest", ["transactions", "export.csv", "--mapping", str(EXAMPLE_MAPPING), "--format", "xls"]),
    ("jobs.ingest", ["transactions", "export.csv", "--mapping", str(EXAMPLE_MAPPING), "--profile", "no-such-profile"]),
    ("plumbing.feast_repo", ["no-such-command"]),
    ("plumbing.feast_repo", ["apply", "--profile", "no-such-profile"]),
    ("jobs.stream_features", ["--no-such-option"]),
    ("jobs.stream_features", ["--profile", "no-such-profile"]),
    ("jobs.consistency_check", ["--sample-fraction", "2"]),
    ("jobs.consistency_check", ["--tables", "no_such_table"]),
    ("jobs.consistency_check", ["--profile", "no-such-profile"]),
    ("jobs.skew_check", ["--since-hours", "0"]),
    ("jobs.skew_check", ["--max-psi", "x"]),
    ("jobs.skew_check", ["--profile", "no-such-profile"]),
    ("jobs.lake_tables", []),
    ("jobs.lake_tables", ["drift", "user_transaction_features", "--against", "yesterday"]),
    ("jobs.lake_tables", ["rollback", "user_transaction_features", "--version", "x"]),
    ("jobs.lake_tables", ["history", "user_transaction_features", "--profile", "no-such-profile"]),
    ("jobs.train_model", ["--versions", "no_such_table=1"]),
    ("jobs.train_model", ["--start", A_DAY, "--end", THE_DAY_BEFORE]),
    ("jobs.train_model", ["--profile", "no-such-profile"]),
    ("serving.app", ["--port", "not-a-port"]),
    ("serving.app", ["--profile", "no-such-profile"]),
    ("jobs.demo", ["--events", "-1"]),
    ("jobs.demo", ["--profile", "no-such-profile"]),
    ("jobs.screenshots", ["--no-such-option"]),
    ("jobs.screenshots", ["--profile", "no-such-profile"]),
]


def _exit_code(module: str, argv: list[str]) -> int:
    try:
        return int(importlib.import_module(module).main(argv) or 0)
    except SystemExit as exc:  # argparse's parser.error and load_config_for_command
        return exc.code if isinstance(exc.code, int) else 1


def _message(stderr: str) -> str:
    """The last line: argparse prints its usage above it, which may take several lines."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "no message on stderr"
    return lines[-1]


@pytest.fixture(autouse=True)
def unchanged_environment():
    """Commands set variables for the processes they start (the console command exports the
    profile it was given): none of that may reach the tests that run after these."""
    before = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(before)


@pytest.mark.parametrize(("module", "argv"), CASES, ids=[f"{m.split('.')[-1]} {' '.join(a)}" for m, a in CASES])
def test_bad_arguments_exit_2_with_a_message(module, argv, capsys):
    code = _exit_code(module, argv)
    captured = capsys.readouterr()
    assert code == 2, f"exit {code}\n{captured.err}"
    assert "Traceback" not in captured.out + captured.err
    message = _message(captured.err)
    assert len(message) <= 300, message
    assert ":" in message, message  # "<program>: <what is wrong>"


def test_every_console_command_is_covered():
    covered = {"bench"}  # test_bench_refuses_an_unknown_option
    for module, argv in CASES:
        if module == "jobs.cli":
            covered |= set(argv) & set(cli.COMMANDS)
        else:
            covered |= {command for command, (job, _) in cli.JOBS.items() if job == module}
    assert set(cli.COMMANDS) - covered == {"test"}  # its arguments are pytest's


def test_the_console_script_exits_2_without_a_traceback():
    # A command refused by tessera itself: the process's own exit code and stderr, in ~1 s
    # (a job's module would add its imports, ~10 s, for nothing the cases above miss).
    tessera = Path(sys.executable).with_name("tessera")
    done = subprocess.run([str(tessera), "no-such-command"], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert _message(done.stderr).startswith("tessera: error: argument command: invalid choice: 'no-such-command'")


def test_bench_refuses_an_unknown_option():
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "bench", "--no-such-option"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "unrecognized arguments: --no-such-option" in _message(done.stderr)
