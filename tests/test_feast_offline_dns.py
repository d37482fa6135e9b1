"""Feast on the s3 profile addresses no host the profile does not name (issue 19).

The s3 profile's Feast steps run in subprocesses where resolving any host other than
loopback fails loudly and is recorded (a ``sitecustomize`` on ``PYTHONPATH`` wraps
``socket.getaddrinfo``): `feast apply` from the command line (which validates every
source), then, with Feast's SDK, apply, a point-in-time training set through the Delta
offline store, materialize and an online read. Native clients resolve without Python
(pyarrow's AWS SDK/libcurl, deltalake's object_store): their failures are asserted
absent from the output, and every step must give the right values. With the lake root
spelled s3:// and s3a:// (Spark's spelling).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid

import pytest

from plumbing.config import REPO_ROOT, load_config
from plumbing.online_store import RedisSettings, redis_client
from tests.test_feature_repo import write_lake

SITECUSTOMIZE = '''
import os, socket, sys, traceback

_real_getaddrinfo = socket.getaddrinfo
_LOCAL = {"localhost", "127.0.0.1", "::1", "ip6-localhost", "ip6-loopback"}


def getaddrinfo(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else ("" if host is None else str(host))
    if name and name not in _LOCAL:
        with open(os.environ["TESSERA_TEST_DNS_LOG"], "a") as log:
            log.write(f"{name} in {sys.argv[:2]}:\\n{''.join(traceback.format_stack(limit=15))}\\n")
        raise socket.gaierror(socket.EAI_NONAME, f"test: resolving {name!r} is forbidden")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = getaddrinfo
'''

# Feast's SDK on the generated yaml, with a project of its own (its online keys are removed
# after the test): apply, training set, materialize, online read. Prints the values as JSON.
SDK_STEPS = textwrap.dedent('''
    import json, sys
    from datetime import datetime, timedelta, timezone

    import pandas as pd

    import feature_repo
    from plumbing.config import load_config

    T0 = datetime(2026, 11, 2, 12, 0, tzinfo=timezone.utc)
    HOUR = timedelta(hours=1)
    cfg = load_config("s3")
    store = feature_repo.apply(cfg, project=sys.argv[1], directory=cfg.data_dir / "sdk")
    service = store.get_feature_service("fraud_model_v1")
    entity_df = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "merchant_id": ["m1", "m1", "m1"],
                              "event_timestamp": [T0 + HOUR / 2, T0 + HOUR, T0 + HOUR]})
    history = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    history = history.sort_values(["user_id", "event_timestamp"])
    store.materialize(T0 - timedelta(days=1), T0 + 3 * HOUR)
    online = store.get_online_features(features=service,
                                       entity_rows=[{"user_id": "u1", "merchant_id": "m1"}]).to_dict()
    print("RESULT " + json.dumps({
        "historical": history[["txn_count_1h", "logins_1h", "merchant_txn_count_30d"]].astype(int).values.tolist(),
        "online": [online["txn_count_1h"][0], online["logins_1h"][0], online["merchant_txn_count_30d"][0]],
    }))
''')

# What native clients print when they reach for a host of their own.
NATIVE_RESOLUTION = re.compile(r"Could not resolve host|dns error|failed to lookup address|amazonaws\.com"
                               r"|Could not validate", re.IGNORECASE)


@pytest.fixture
def no_dns_env(s3_services, tmp_path):
    """The environment of a subprocess that may resolve loopback only; its log of attempts."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "dns_attempts.log"
    # Nothing from the caller's AWS setup: the profile alone must say where S3 is. Nor what
    # tells libraries they run under a test or in CI (MLflow then skips its call home).
    hidden = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_") and key not in hidden}
    env.update({
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO_ROOT)]),
        "TESSERA_TEST_DNS_LOG": str(log),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "TESSERA__DATA_DIR": str(tmp_path / "data"),  # the generated yaml and registries
        s3_services.redis.password_env: s3_services.redis_password(),
    })
    return env, log


def run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("scheme", ["s3", "s3a"])
def test_feast_steps_of_the_s3_profile_resolve_no_outside_host(scheme, s3_services, no_dns_env):
    env, log = no_dns_env
    env["TESSERA__LAKE__ROOT"] = f"{scheme}://{s3_services.s3.buckets[0]}/tests/feast-dns-{uuid.uuid4().hex[:8]}"
    write_lake(load_config("s3", environ=env))
    project = f"t_dns_{uuid.uuid4().hex[:8]}"
    try:
        applied = run([sys.executable, "-m", "plumbing.feast_repo", "apply", "--profile", "s3"], env)
        sdk = run([sys.executable, "-c", SDK_STEPS, project], env)
    finally:
        client = redis_client(RedisSettings.from_config(s3_services))
        for key in client.scan_iter(match=b"*" + project.encode(), count=10_000):
            client.delete(key)

    attempts = log.read_text() if log.exists() else ""
    assert attempts == "", f"hosts resolved outside the profile:\n{attempts}"
    for name, done in (("feast apply", applied), ("Feast SDK steps", sdk)):
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"{name} failed:\n{output}"
        assert not NATIVE_RESOLUTION.search(output), f"{name} reached for a host of its own:\n{output}"
    assert "Deploying infrastructure for merchant_features" in applied.stdout + applied.stderr
    result = json.loads(next(line for line in sdk.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # (txn_count_1h, logins_1h, merchant_txn_count_30d): u1 at T0+30 min, u1 at T0+1 h, u2 at T0+1 h
    assert result["historical"] == [[1, 7, 4], [2, 7, 4], [5, 8, 4]]
    assert result["online"] == [3, 7, 4]  # the newest rows materialized
