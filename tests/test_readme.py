"""The README's shell blocks, as a new user would type them: every command is a known
kind, make targets exist, the API examples are valid requests, and the spark-submit
examples run as written (on a scratch data folder)."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest

from jobs.cli import JOBS
from plumbing.config import REPO_ROOT
from serving.models import FeaturesRequest, PredictRequest
from tests.doc_commands import bash_commands, program

README = (REPO_ROOT / "README.md").read_text()
KNOWN_PROGRAMS = {"make", "curl", "export", "spark-submit"}
REQUEST_MODELS = {"/v1/features": FeaturesRequest, "/v1/predict": PredictRequest}

COMMANDS = bash_commands(README)

# docs/*.md: each page's shell blocks are run, as written, by tests/test_docs.py; these are
# the kinds of command it knows how to run. A page with commands must be one it runs.
DOC_PAGES = sorted((REPO_ROOT / "docs").glob("*.md"))
DOC_PROGRAMS = {"git", "curl", "export", ".venv/bin/pytest", ".venv/bin/tessera"}
DOC_PAGES_RUN_BY_TEST_DOCS = {"adding_a_feature.md", "operations.md"}


def _program(command: str) -> str:
    return program(command)


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


@pytest.mark.e2e
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


def test_there_are_docs_and_the_readme_links_every_page():
    assert {page.name for page in DOC_PAGES} >= {"architecture.md", "adding_a_feature.md", "operations.md",
                                                 "production.md"}
    for page in DOC_PAGES:
        assert f"(docs/{page.name})" in README, f"README does not link docs/{page.name}"


@pytest.mark.parametrize("page", [REPO_ROOT / "README.md", *DOC_PAGES], ids=lambda page: page.name)
def test_local_links_and_images_resolve(page):
    """Relative links and images point at files that exist (the benchmark plots included)."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text())
    local = [target for target in targets if "://" not in target and not target.startswith("mailto:")]
    if page.name == "README.md":  # it links the docs and the benchmark plots
        assert any(target.startswith("docs/") for target in local) and any(target.endswith(".png") for target in local)
    missing = [target for target in local if not (page.parent / target).exists()]
    assert not missing, f"{page.name} links files that do not exist: {missing}"


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda page: page.name)
def test_docs_commands_are_kinds_the_doc_test_runs(page):
    commands = bash_commands(page.read_text())
    if not commands:
        return
    assert page.name in DOC_PAGES_RUN_BY_TEST_DOCS, f"{page.name} has shell commands no test runs"
    unknown = [command for command in commands if _program(command) not in DOC_PROGRAMS]
    assert not unknown, f"{page.name}: commands of a kind tests/test_docs.py does not run: {unknown}"
    for command in commands:
        words = shlex.split(command, comments=True)
        if words[0] == ".venv/bin/tessera":
            assert words[1] in JOBS, f"{page.name}: no subcommand {words[1]!r}: {command}"
        # A valid request: a 422 would be a ValidationError here. Not on the worked example's
        # page: it asks for the feature it adds, and test_docs runs it against the changed API.
        if words[0] == "curl" and page.name != "adding_a_feature.md":
            path = re.sub(r"^(https?://)?[^/]+", "", next(word for word in words if word.startswith("localhost:")))
            REQUEST_MODELS[path].model_validate(json.loads(words[words.index("-d") + 1]))


def test_the_production_sizing_quotes_the_readmes_benchmarks():
    """docs/production.md's sizing figures are the README's measured ones: every figure of
    its Sizing section written with a decimal point or thousands separator (4,730 events/s,
    p99 10.2 s) appears in the README, so a new benchmark run cannot leave it contradicting."""
    page = (REPO_ROOT / "docs" / "production.md").read_text()
    sizing = page.split("\n## Sizing\n", 1)[1].split("\n## ", 1)[0]
    figures = set(re.findall(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w,])|(?<![\w.,])\d+\.\d+(?![\w.])", sizing))
    assert len(figures) >= 10, f"the Sizing section quotes too few figures to check: {sorted(figures)}"
    absent = sorted(figure for figure in figures
                    if not re.search(rf"(?<![\d.,]){re.escape(figure)}(?![\d]|[.,]\d)", README))
    assert not absent, f"docs/production.md's Sizing quotes figures the README's benchmarks do not hold: {absent}"
