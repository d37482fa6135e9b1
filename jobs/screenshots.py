"""The pages people look at, opened in a real browser, checked as a person would read them,
and photographed.

    tessera screenshots [--profile local] [--out docs/images]   # after `make demo`

  * the API's docs: /docs (Swagger UI) lists every operation of the OpenAPI document and
    its "Try it out" sends the example of POST /v1/features (answer 200); /redoc renders;
  * the feature catalog: Feast's UI lists the feature views;
  * MLflow: the feature-table runs in the project's saved view, and one run's page with its
    validation result.

Chromium is the OS package (scripts/setup.sh installs it), driven by Playwright's Python
package, which downloads no browser of its own here. Its network is loopback only: host
names resolve to nothing but 127.0.0.1 and any other address goes through a proxy on the
discard port, where nothing listens. On top of that each check fails when its page asks
another host for anything, so a page that needs a CDN or a web font fails here instead of
rendering blank on a machine without internet access.

tests/test_pages.py runs the same checks against services of its own; this command runs
them against the profile's (the API on a free port, Feast's UI started if it is not
running) and writes docs/images/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from plumbing.config import REPO_ROOT, add_profile_option, load_config_for_command

IMAGES_DIR = REPO_ROOT / "docs" / "images"
VIEWPORT = {"width": 1400, "height": 820}
TIMEOUT_MS = 60_000  # a page's content on a busy 2-core machine
# Chromium reaches loopback only. It never sends loopback through a proxy, so the dead
# proxy catches every other address; the resolver rule stops what does not use the proxy.
CHROMIUM_ARGS = ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                 "--proxy-server=http://127.0.0.1:9"]
LOOPBACK_HOSTS = {"127.0.0.1", "localhost"}
PAGE_SCHEMES = {"data", "blob", "about"}  # made by the page itself, no network
# MLflow's UI opens an assistant panel on a first visit: closed, the runs get the width.
MLFLOW_LOCAL_STORAGE = {"mlflow.assistant.panelOpen_v1": "false",
                        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true"}
TRY_IT_OUT = "/v1/features"  # its example needs Redis only; /v1/predict's needs a champion model too


class PageCheckFailed(Exception):
    """A page did not show what it should, or asked the internet for something."""


# ---------------------------------------------------------------- the browser
@contextmanager
def chromium() -> Iterator:
    """Headless Chromium from the OS packages, network limited to loopback (a Playwright Browser)."""
    executable = shutil.which("chromium")
    if executable is None:
        raise PageCheckFailed("chromium is not installed: `make setup` installs it when run as root "
                              "(Debian/Ubuntu: apt-get install chromium)")
    try:  # a tool for the docs' images: its browser driver is in the dev extra, not the install set
        from playwright.sync_api import sync_playwright
    except ImportError:
        raise PageCheckFailed("playwright is not installed: pip install -e '.[dev]' (or make setup)") from None

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def opened(browser, url: str, local_storage: dict[str, str] | None = None) -> Iterator:
    """A page on ``url`` in a fresh context (no cookies, empty storage but ``local_storage``).
    Leaving the block fails when the page asked any host but loopback for anything; requests
    refused by the page's own Content-Security-Policy are never sent, so they do not count."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(TIMEOUT_MS)
    if local_storage:
        context.add_init_script(f"for (const [k, v] of Object.entries({json.dumps(local_storage)})) "
                                "localStorage.setItem(k, v);")
    page = context.new_page()
    offsite: list[str] = []
    refused: set[str] = set()
    page.on("request", lambda request: None if _local(request.url) else offsite.append(request.url))
    page.on("requestfailed", lambda request: refused.add(request.url) if request.failure == "csp" else None)
    try:
        page.goto(url)
        yield page
        sent = [asked for asked in offsite if asked not in refused]
        if sent:
            raise PageCheckFailed(f"{url} asked hosts other than loopback for {sent}: it would not work offline")
    finally:
        context.close()


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in PAGE_SCHEMES or parts.hostname in LOOPBACK_HOSTS


# ---------------------------------------------------------------- the pages
def swagger_ui(browser, api_url: str, png: Path) -> list[str]:
    """/docs lists every operation of /openapi.json ("METHOD /path", returned in page order),
    and "Try it out" on POST /v1/features sends its example and shows the answer 200."""
    spec = _json(f"{api_url}/openapi.json")
    expected = sorted(f"{method.upper()} {path}" for path, operations in spec["paths"].items()
                      for method in operations)
    with opened(browser, f"{api_url}/docs") as page:
        blocks = page.locator(".opblock")
        blocks.first.wait_for()
        listed = [f"{block.locator('.opblock-summary-method').inner_text()} "
                  f"{block.locator('.opblock-summary-path').inner_text()}" for block in blocks.all()]
        page.screenshot(path=png)
        if sorted(listed) != expected:
            raise PageCheckFailed(f"/docs lists {listed}, the OpenAPI document has {expected}")
        operation = spec["paths"][TRY_IT_OUT]["post"]
        block = page.locator(f"#operations-{operation['tags'][0]}-{operation['operationId']}")
        block.locator(".opblock-summary").click()
        block.locator("button.execute").click()  # the UI opens in "Try it out" mode (serving.docs_pages)
        status = block.locator(".live-responses-table tbody .response-col_status")
        status.wait_for()
        if status.inner_text().strip() != "200":
            raise PageCheckFailed(f"Try it out on POST {TRY_IT_OUT} answered {status.inner_text()!r}, not 200")
    return listed


def redoc(browser, api_url: str, png: Path) -> list[str]:
    """/redoc shows the summary of every operation; returns them."""
    spec = _json(f"{api_url}/openapi.json")
    summaries = [operation["summary"] for operations in spec["paths"].values() for operation in operations.values()]
    with opened(browser, f"{api_url}/redoc") as page:
        for summary in summaries:
            page.locator("h2", has_text=summary).first.wait_for()
        page.screenshot(path=png)
    return summaries


def feature_catalog(browser, ui_url: str, project: str, views: Sequence[str], png: Path) -> list[str]:
    """Feast's UI lists ``views`` among the feature views of ``project``; returns the names listed."""
    with opened(browser, f"{ui_url}/p/{project}/feature-view") as page:
        table = page.locator("table")
        for view in views:
            table.get_by_role("link", name=view, exact=True).wait_for()
        listed = table.locator("tbody tr a").all_inner_texts()
        page.screenshot(path=png)
    return listed


def mlflow_runs(browser, runs_url: str, runs: dict[str, str], columns: Sequence[str], png: Path) -> None:
    """MLflow's runs page shows a row for each run (run name -> run id), and ``columns`` as headers."""
    with opened(browser, runs_url, MLFLOW_LOCAL_STORAGE) as page:
        for name, run_id in runs.items():
            link = page.locator(f'a[href*="/runs/{run_id}"]').first
            link.wait_for()
            if link.inner_text().strip() != name:
                raise PageCheckFailed(f"run {run_id} shows as {link.inner_text()!r}, not {name!r}")
        for column in columns:
            page.get_by_role("columnheader", name=column).first.wait_for()
        page.screenshot(path=png)


def mlflow_run(browser, run_url: str, texts: Sequence[str], png: Path) -> None:
    """A run's page shows ``texts`` (metric and tag names, values)."""
    with opened(browser, run_url, MLFLOW_LOCAL_STORAGE) as page:
        for text in texts:
            page.get_by_text(text, exact=True).first.wait_for()
        page.screenshot(path=png)


def _json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


# ---------------------------------------------------------------- the API, for the pages
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def api_server(profile: str, port: int, env: dict[str, str] | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """`python -m serving` (what `make serve` runs) of ``profile`` on 127.0.0.1:``port``,
    until the block ends; yields its URL."""
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a full pipe would stall the server
    server = subprocess.Popen([sys.executable, "-m", "serving", "--profile", profile, "--host", "127.0.0.1",
                               "--port", str(port), "--log-level", "warning"],
                              cwd=REPO_ROOT, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):
                    break
            except OSError:
                if server.poll() is not None:
                    log.seek(0)
                    raise PageCheckFailed(f"the API exited while starting:\n{log.read()[-3000:]}") from None
                if time.monotonic() > deadline:
                    raise PageCheckFailed(f"the API did not answer on {url} within {timeout_s:.0f}s") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


# ---------------------------------------------------------------- the command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera screenshots", description=__doc__.split("\n\n")[0])
    add_profile_option(parser)
    parser.add_argument("--out", type=Path, default=IMAGES_DIR, help=f"folder of the images (default {IMAGES_DIR})")
    args = parser.parse_args(argv)
    cfg = load_config_for_command(args.profile, "screenshots")

    from plumbing import feast_repo, services, tracking
    from plumbing.lake import LakeTable
    from plumbing.online_store import FEAST_PROJECT
    from transformations.catalog import FEATURE_TABLES

    # The run that wrote the table's current version: what a person looking at the table finds.
    table = next(iter(FEATURE_TABLES.values()))
    lake_table = LakeTable.for_config(cfg, table.name, time_column=table.timestamp_column)
    runs = tracking.find_runs(cfg, table.name, lake_table.version()) if lake_table.exists() else []
    if not runs or not (feast_repo.feast_dir(cfg) / "registry.db").exists():
        print(f"screenshots: no {table.name} table with its MLflow run, or no Feast registry, for profile "
              f"{cfg.profile}: run `make demo` first", file=sys.stderr)
        return 1
    run = runs[0]
    args.out.mkdir(parents=True, exist_ok=True)
    feast_ui = services.FeastUiService(cfg)
    started_feast_ui = not feast_ui.running()
    print(services.feast_ui_up(cfg, feast_ui.port))
    try:
        with chromium() as browser, api_server(str(cfg.source_file), free_port()) as api_url:
            swagger_ui(browser, api_url, args.out / "api-docs.png")
            feature_catalog(browser, f"http://{feast_ui.host}:{feast_ui.port}", FEAST_PROJECT, list(FEATURE_TABLES),
                            args.out / "feature-catalog.png")
            mlflow_run(browser, tracking.run_url(cfg, run.info.experiment_id, run.info.run_id),
                       ["validation_success_percent", tracking.DELTA_VERSION_TAG], args.out / "mlflow-run.png")
    except PageCheckFailed as failure:
        print(f"screenshots: {failure}", file=sys.stderr)
        return 1
    finally:
        if started_feast_ui:
            print(*services.down(cfg, ["feast-ui"]))
    for name in ("api-docs.png", "feature-catalog.png", "mlflow-run.png"):
        print(f"  {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
