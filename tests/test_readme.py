"""The README's shell blocks, as a new user would type them: every command is a known
kind, make targets exist, the API examples are valid requests, and the spark-submit
examples run as written (on a scratch data folder)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

from plumbing.config import REPO_ROOT
from serving.models import FeaturesRequest, PredictRequest

README = (REPO_ROOT / "README.md").read_text()
KNOWN_PROGRAMS = {"make", "curl", "export", "spark-submit"}
REQUEST_MODELS = {"/v1/features": FeaturesRequest, "/v1/predict": PredictRequest}


def _commands() -> list[str]:
    """The commands of the ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        pending = ""
        for line in block.replace("\\\n", " ").splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                words = shlex.split(pending, comments=True)
            except ValueError:  # a quoted string goes on over the next line
                continue
            if words:
                commands.append(pending.strip())
            pending = ""
    return commands


COMMANDS = _commands()


def _program(command: str) -> str:
    return shlex.split(command, comments=True)[0]


def test_every_command_is_a_kind_this_test_checks():
    assert COMMANDS
    unknown = [command for command in COMMANDS if _program(command) not in KNOWN_PROGRAMS]
    assert not unknown, f"README commands this test does not check yet: {unknown}"


def test_make_targets_exist():
    targets = [shlex.split(command, comments=True)[1] for command in COMMANDS if _program(command) == "make"]
    assert {"demo", "test"} <= set(targets)
    for target in targets:
        dry_run = subprocess.run(["make", "-n", target], cwd=REPO_ROOT, capture_output=True, text=True)
        assert dry_run.returncode == 0, f"make {target}: {dry_run.stderr}"


def test_api_examples_are_valid_requests():
    curls = [shlex.split(command, comments=True) for command in COMMANDS if _program(command) == "curl"]
    assert curls
    for words in curls:
        path = re.sub(r"^(https?://)?[^/]+", "", next(word for word in words if word.startswith("localhost:")))
        body = json.loads(words[words.index("-d") + 1])
        REQUEST_MODELS[path].model_validate(body)  # a 422 would be a ValidationError here


def test_spark_submit_examples_run_as_written(local_services, tmp_path):
    lines = [command for command in COMMANDS if _program(command) in {"export", "spark-submit"}]
    assert any(_program(line) == "spark-submit" for line in lines)
    env = {**os.environ,
           "PATH": f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
           # A scratch history and lake: the example must not touch the demo's data.
           "TESSERA__EVENTS__HISTORY_URI": str(tmp_path / "history"),
           "TESSERA__LAKE__ROOT": str(tmp_path / "lake")}
    script = "set -e\n" + "\n".join(lines)
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "lake" / "user_transaction_features" / "_delta_log").is_dir()
