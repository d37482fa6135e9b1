"""The whole pipeline on the embedded default, start to end, printing what it did.

    tessera demo [--events 300000] [--days 14] [--fresh]

1. start the local services (Redis, MLflow; and the S3 endpoint on the s3 profile);
2. generate the raw event history, unless it is already there (``--fresh`` regenerates);
3. compute, validate and publish the feature tables for the whole period (Delta + Redis),
   each tracked as an MLflow run;
4. print where everything is and a sample of online features.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import date, datetime, timedelta, timezone

import pyarrow.fs as pafs

from plumbing import services
from plumbing.config import Config, load_config
from plumbing.lake import filesystem_and_root, table_uri
from transformations.catalog import FEATURE_TABLES


def _step(number: int, text: str) -> None:
    print(f"\n== {number}. {text}", flush=True)


def _history_exists(cfg: Config, start: date) -> bool:
    """True when the history of this period is there (its first day's folder exists)."""
    uri = f"{cfg.events.history_uri}/transactions/date={start.isoformat()}"
    filesystem, root = filesystem_and_root(uri, cfg.storage_options(uri))
    return filesystem.get_file_info(root).type == pafs.FileType.Directory


def _show_online_sample(cfg: Config) -> None:
    from plumbing.online_store import OnlineStoreReader

    reader = OnlineStoreReader(cfg)
    refs = ["user_transaction_features:txn_count_24h", "user_transaction_features:txn_amount_mean_7d",
            "user_activity_features:failed_logins_24h"]
    for entity in ("u000001", "u000002"):
        answer = reader.read(refs, [{"user_id": entity}])[0]
        shown = ", ".join(f"{ref.split(':')[1]}={value.value!r} ({value.status})" for ref, value in answer.items())
        print(f"  user {entity}: {shown}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=os.environ.get("TESSERA_PROFILE", "local"))
    parser.add_argument("--events", type=int, default=300_000, help="raw events to generate (default 300k)")
    parser.add_argument("--days", type=int, default=14, help="days of history (default 14)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--fresh", action="store_true", help="regenerate the history even if present")
    args = parser.parse_args(argv)
    cfg = load_config(args.profile)
    started = time.monotonic()
    # History ends at today's midnight (UTC), so the newest values are within their ttl
    # online; the period is fixed per day, and so is the generated data.
    end = datetime.now(timezone.utc).date()
    start = end - timedelta(days=args.days)

    _step(1, f"services of profile {cfg.profile}")
    for line in services.up(cfg):
        print(f"  {line}")

    _step(2, "raw event history")
    if args.fresh or not _history_exists(cfg, start):
        from jobs import generate_events

        code = generate_events.main(["history", "--profile", args.profile, "--events", str(args.events),
                                     "--days", str(args.days), "--start-date", start.isoformat(),
                                     "--seed", str(args.seed), "--partition-by-date", "--overwrite"])
        if code:
            return code
    else:
        print(f"  already at {cfg.events.history_uri} (use --fresh to regenerate)")

    _step(3, "batch features: compute, validate, publish (Delta + Redis), track (MLflow)")
    from jobs import batch_features

    code = batch_features.main(["--profile", args.profile, "--start", start.isoformat(), "--end", end.isoformat()])
    if code:
        return code

    _step(4, "where things are")
    for name in FEATURE_TABLES:
        print(f"  offline  {name:28s} {table_uri(cfg, name)}")
    print(f"  online   Redis {cfg.redis.host}:{cfg.redis.port} (Feast layout, project tessera)")
    print(f"  tracking MLflow {cfg.mlflow.tracking_uri} (experiment tessera/feature-tables)")
    _show_online_sample(cfg)
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
