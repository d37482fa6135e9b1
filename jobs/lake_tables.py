"""`tessera table`: look after the offline store's Delta tables.

    tessera table history  <table>                 versions, newest first, each with its MLflow run
    tessera table rollback <table> --version N     make version N's content current again
    tessera table report   <table> [--version N]   fetch the validation report of a version
    tessera table drift    <table> [--version N] [--against M|champion]
                                                   each feature's drift between two versions

A rollback is a Delta RESTORE: a NEW commit whose content (files and schema) is version N's.
No history is rewritten: every version stays readable by time travel, and rolling back
the rollback is another restore. The rollback has its own MLflow run in
``tessera/feature-tables`` (tags ``delta_version`` = the new version, ``restored_from_version`` = N),
so "which run made the current version" always has an answer.

Only the offline store is rolled back. Redis keeps the newest row per entity (an older
row never replaces a newer one), so online values stay those of the current code until
the entity's next event; see docs/operations.md.

Works on any table under ``lake.root`` (feature tables, ``bronze_*``, dead letters), local
or S3. ``history`` and ``report`` need no Spark (the log is read with ``deltalake``); the
rollback is a delta-spark RESTORE, like every other write to the lake. The mode and range
of each commit come from its Delta ``userMetadata`` (see ``plumbing.lake``).
"""
from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

from plumbing import feature_stats, tracking
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.lake import MODE_KEY, RANGE_KEY, LakeError, LakeTable, table_uri

RESTORED_FROM_TAG = "restored_from_version"


def _table(cfg: Config, name: str) -> LakeTable:
    table = LakeTable.for_config(cfg, name)
    if not table.exists():
        raise LakeError(f"no Delta table {name!r} at {table_uri(cfg, name)}")
    return table


def _runs_by_version(cfg: Config, name: str) -> dict[int, str]:
    """Delta version -> id of the newest MLflow run that recorded it (runs come newest first)."""
    by_version: dict[int, str] = {}
    for run in tracking.find_runs(cfg, name):
        version = run.data.tags.get(tracking.DELTA_VERSION_TAG)
        if version is not None and version.isdigit():
            by_version.setdefault(int(version), run.info.run_id)
    return by_version


def history(cfg: Config, name: str) -> list[dict]:
    """One dict per commit, newest first: version, UTC time, operation, mode, range, run id."""
    runs = _runs_by_version(cfg, name)
    rows = []
    for commit in _table(cfg, name).history():
        version = commit["version"]
        when = datetime.fromtimestamp(commit["timestamp"] / 1000, tz=timezone.utc)
        rows.append({"version": version, "time": when.strftime("%Y-%m-%d %H:%M:%S"),
                     # A key may be absent or null (a schema-only commit has no mode).
                     "operation": commit.get("operation") or "",
                     "mode": commit.get(MODE_KEY) or "", "range": _range_text(commit.get(RANGE_KEY)),
                     "run": runs.get(version, "")})
    return rows


def _range_text(value) -> str:
    """A replace's [start, end) dates as "start..end"; other notes as they are."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}..{value[1]}"
    return str(value or "")


def rollback(cfg: Config, name: str, version: int) -> int:
    """Restore ``name`` to ``version`` in a new commit, tracked in MLflow; return the new version."""
    from plumbing.spark import get_spark

    table = _table(cfg, name)
    current = table.version()
    if not 0 <= version < current:
        raise LakeError(f"{name}: can roll back only to a version in 0..{current - 1} (current: {current})")
    spark = get_spark(cfg, "table-rollback")
    with tracking.feature_table_run(cfg, name, run_name=f"{name} rollback to {version}",
                                    tags={RESTORED_FROM_TAG: str(version)}):
        new_version = table.restore(spark, version)
        tracking.log_delta_version(new_version)
    return new_version


def fetch_report(cfg: Config, name: str, version: int | None, out: Path) -> tuple[str, Path]:
    """Download the validation artifacts of the run that wrote ``version`` (default: the
    current version) into ``out``; return (run id, local folder of the report)."""
    from mlflow import MlflowClient

    version = _table(cfg, name).version() if version is None else version
    runs = tracking.find_runs(cfg, name, delta_version=version)
    if not runs:
        raise LakeError(f"{name}: no MLflow run recorded Delta version {version}")
    run_id = runs[0].info.run_id
    client = MlflowClient(cfg.mlflow.tracking_uri)
    if not client.list_artifacts(run_id, f"validation/{name}"):  # e.g. a rollback's run: nothing validated
        raise LakeError(f"{name}: run {run_id} of Delta version {version} has no validation report")
    out.mkdir(parents=True, exist_ok=True)
    local = client.download_artifacts(run_id, f"validation/{name}", str(out))
    return run_id, Path(local)


def drift_report(cfg: Config, name: str, version: int | None) -> str:
    """The drift of ``version`` (default: the current one) against its reference: one line,
    then a line per feature over a warning threshold."""
    version = _table(cfg, name).version() if version is None else version
    statistics = feature_stats.load(cfg, name, version)
    if not statistics:
        return f"drift: no statistics kept for version {version}"
    warned = [stats for stats in statistics.values() if stats.warnings]
    lines = [feature_stats.drift_line(name, list(statistics.values()))]
    lines += [f"  warning {stats.feature}: {', '.join(stats.warnings)}" for stats in warned]
    return "\n".join(lines)


def champion_version(cfg: Config, name: str, model_name: str = "tessera-fraud") -> int:
    """The version of ``name`` the champion model was trained on (its run's lineage tag)."""
    import mlflow

    tracking.configure_tracking(cfg)
    client = mlflow.MlflowClient()
    try:
        run_id = client.get_model_version_by_alias(model_name, "champion").run_id
    except mlflow.exceptions.MlflowException as error:
        raise LakeError(f"no champion of {model_name} to take the reference version from") from error
    tag = client.get_run(run_id).data.tags.get(f"delta_version.{name}") if run_id else None
    if tag is None:
        raise LakeError(f"the champion of {model_name} records no version of {name} in its lineage")
    return int(tag)


def drift_between(cfg: Config, name: str, version: int | None, against: int | None) -> list[str]:
    """Each feature's drift of ``version`` (default: the current one) against ``against``
    (default: the one before), computed now from both versions (Spark); the lines to print."""
    from plumbing.spark import get_spark

    table = _table(cfg, name)
    latest = table.version()
    version = latest if version is None else version
    against = version - 1 if against is None else against
    for label, number in (("--version", version), ("--against", against)):
        if not 0 <= number <= latest:
            raise LakeError(f"{name} has no version {number} ({label}); its versions are 0..{latest}")
    spark = get_spark(cfg, "table-drift")
    reference_df, current_df = table.read(spark, against), table.read(spark, version)
    numeric = ("double", "float", "bigint", "int", "smallint", "tinyint")
    columns = {df_name: {field.name for field in df.schema.fields if field.dataType.simpleString() in numeric}
               for df_name, df in (("reference", reference_df), ("current", current_df))}
    shared = sorted(columns["reference"] & columns["current"])
    reference = feature_stats.compute(reference_df, name, shared)
    for stats in reference:
        stats.table_version = against
    current = feature_stats.compute(current_df, name, shared, {stats.feature: stats for stats in reference})
    feature_stats.judge(current, cfg.monitoring)
    lines = [feature_stats.drift_line(name, current).replace(f"{name}: ", f"{name} v{version}: ", 1)]
    lines += [f"  {stats.feature:32s} psi {stats.psi:7.3f}  ks {stats.ks:5.3f}  nulls {stats.null_fraction:6.1%}"
              f"{'  WARNING' if stats.warnings else ''}" for stats in current]
    for side, other, number in (("current", "reference", version), ("reference", "current", against)):
        only = sorted(columns[side] - columns[other])
        if only:
            lines.append(f"  only in v{number} (not compared): {', '.join(only)}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera table", description=__doc__.split("\n\n")[0])
    add_profile_option(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="action")
    show = sub.add_parser("history", help="the table's versions, newest first, with their MLflow runs")
    show.add_argument("table")
    back = sub.add_parser("rollback", help="make an old version current again, in a new commit")
    back.add_argument("table")
    back.add_argument("--version", type=int, required=True, help="the version whose content to restore")
    report = sub.add_parser("report", help="download the validation report (GX result, data docs) of a version")
    report.add_argument("table")
    report.add_argument("--version", type=int, help="Delta version (default: the current one)")
    report.add_argument("--out", type=Path, help="folder to download into (default: <data_dir>/reports/<table>-v<N>)")
    drift = sub.add_parser("drift", help="each feature's drift (PSI, KS, nulls) between two versions")
    drift.add_argument("table")
    drift.add_argument("--version", type=int, help="the version to judge (default: the current one)")
    drift.add_argument("--against", default=None,
                       help="the reference: a version number, or 'champion' (the version the champion model "
                            "was trained on); default: the version before")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = load_config_for_command(args.profile, "tessera table")
    try:
        if args.action == "history":
            print(f"{'version':>7}  {'time (UTC)':19}  {'operation':14} {'mode':14} {'range':24} mlflow run")
            for row in history(cfg, args.table):
                print(f"{row['version']:>7}  {row['time']:19}  {row['operation']:14} {row['mode']:14} "
                      f"{row['range']:24} {row['run']}")
        elif args.action == "rollback":
            new_version = rollback(cfg, args.table, args.version)
            print(f"{args.table}: version {new_version} restores version {args.version} "
                  f"(every earlier version is still readable)")
        elif args.action == "drift":
            if args.against is not None and args.against != "champion" and not args.against.isdigit():
                print(f"tessera table: --against must be a version number or 'champion', not {args.against!r}",
                      file=sys.stderr)
                return 2
            against = (champion_version(cfg, args.table) if args.against == "champion"
                       else None if args.against is None else int(args.against))
            for line in drift_between(cfg, args.table, args.version, against):
                print(line)
        else:
            version = args.version
            out = args.out or cfg.data_dir / "reports" / f"{args.table}-v{'current' if version is None else version}"
            run_id, folder = fetch_report(cfg, args.table, version, out)
            failed = (folder / "failed.txt").read_text().strip() if (folder / "failed.txt").exists() else ""
            print(f"{args.table}: validation report of run {run_id} in {folder}")
            print(f"  data docs: {folder / 'data_docs' / 'index.html'}")
            print(f"  GX result: {folder / 'result.json'}")
            print("  failed expectations: " + (failed.replace("\n", "\n    ") if failed else "none"))
            print("  " + drift_report(cfg, args.table, version).replace("\n", "\n  "))
    except LakeError as exc:
        print(f"tessera table: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
