"""Ingest: an export in another shape (CSV, Parquet, JSON lines) -> the raw history.

    tessera ingest transactions 'exports/cards-2026-03.csv' --mapping docs/examples/ingest_transactions.yaml
    python -m jobs.ingest transactions s3://bucket/exports/*.parquet --mapping m.yaml    (the same)

Reads the input with Spark (a local path, a glob or an ``s3://`` URI), maps its columns to
the event type's declared columns with a YAML mapping (rename, constant or Spark SQL
expression per column; a time format and a source time zone for naive local times; ids
of any type become strings), validates every row as the batch job does
(``transformations.cleaning.validate_typed_events``) and then:

- rows that do not fit go to the Delta table ``ingest_dead_letter_<event type>`` with the
  reason and the source row as it was read;
- the rest land as Parquet in the raw history, ``<events.history_uri>/<event type>/
  date=YYYY-MM-DD/ingest-<import id>-NNN.parquet`` (UTC date of ``event_time``), where
  the batch job reads them like any other history file;
- a mapped fraud flag lands beside them, in ``<events.history_uri>/fraud_labels/`` (one
  row per landed transaction: ids, time, ``is_fraud``), the labels of ``tessera train
  --labels flag`` (``plumbing.training_sets``).

Columns the export lacks or leaves empty get the mapping's defaults (``jobs.ingest_mapping``:
device and country have built-in ones); the summary says how many rows got one and what
that means for the features. When more than ``--max-reject-fraction`` of the rows are
rejected, nothing of the file lands (the dead letters are filed, to show why).

Idempotent by content: the import id is a hash of the input's rows and of the mapping, so
ingesting the same export with the same mapping again names the same files, which are
already there: nothing is added (the dead letters of an import are filed once too).
Files are written to a staging folder first and moved into place one per date, so an
ingest that fails leaves what earlier ingests landed as it was. The raw-events suite
(Great Expectations) runs on what would land and is recorded in MLflow with the summary
(run ``ingest.<event type>``); a failed suite lands nothing.

The mapping file is documented in docs/your_own_events.md ("Bringing an export in").

Exit codes: 0 landed (rejected rows, if any, are in the dead-letter table); 1 the
validation suite failed, or more rows than the limit were rejected: nothing landed; 2 bad
usage or unusable input (a mapping naming a column the input lacks, an empty file, no file
at the path): nothing written.
"""
from __future__ import annotations

import argparse
import hashlib
import sys
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from expectations.runner import record_validation, validate
from expectations.suites import raw_events_suite
from jobs.ingest_mapping import (
    DEFAULTED,
    FLAG_REASON,
    FLAG_UNPARSED,
    FORMATS,
    FRAUD_FLAG,
    ROW_HASH,
    SOURCE_ROW,
    UNPARSED,
    IngestError,
    Mapping,
    default_note,
    load_mapping,
    map_columns,
    read_input,
)
from plumbing import tracking
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.event_tables import dead_letter_table
from plumbing.raw_events import history_uri
from plumbing.spark import get_spark
from plumbing.training_sets import FRAUD_FLAG_COLUMN, FRAUD_LABELS
from transformations import cleaning
from transformations.schemas import EVENT_ENTITY_COLUMNS, EVENT_ID_COLUMNS, EVENT_TYPES, SCHEMAS

__all__ = ["IngestError", "IngestResult", "Mapping", "RejectLimitExceeded", "ValidationFailed", "load_mapping",
           "main", "run"]

RUN_PREFIX = "ingest."
STAGING_FOLDER = "_ingest_staging"  # under events.history_uri, beside (not inside) the event types' folders
UNDECODABLE = "\ufffd"  # what a reader puts for bytes its encoding cannot decode
# Above this share of rejected rows the export itself is suspect (a wrong mapping, a
# changed layout): nothing of it lands. The batch job stops at the same share.
DEFAULT_MAX_REJECT_FRACTION = 0.05


class ValidationFailed(Exception):
    """The raw-events suite failed on the rows that would land: nothing landed."""


class RejectLimitExceeded(Exception):
    """More rows were rejected than the limit allows: nothing landed (the dead letters were filed)."""


# ------------------------------------------------------------------ the job
@dataclass
class IngestResult:
    import_id: str
    rows_read: int
    rows_landed: int
    rejected: dict[str, int]
    first_time: str | None  # UTC, yyyy-MM-dd HH:mm:ss
    last_time: str | None
    entities: dict[str, int]
    files_written: list[str]
    files_already_there: list[str]
    dead_letters_written: int
    run_id: str
    duplicate_ids: int = 0  # (entity, id) pairs landed more than once
    duplicate_ids_differing: int = 0  # ... whose rows differ
    undecodable_rows: int = 0  # rows with text the input's encoding could not decode
    defaulted: dict[str, int] = field(default_factory=dict)  # column -> rows that got its default
    default_notes: dict[str, str] = field(default_factory=dict)  # column -> the default and what it means
    flagged: int | None = None  # landed transactions flagged as fraud (None: the mapping has no fraud_flag)
    label_files_written: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"  rows read     {self.rows_read:,}",
                 f"  rows landed   {self.rows_landed:,} ({len(self.files_written)} file(s) written, "
                 f"{len(self.files_already_there)} already there: import {self.import_id})",
                 f"  rows rejected {sum(self.rejected.values()):,}"]
        lines += [f"    {reason:32s} {count:,}" for reason, count in sorted(self.rejected.items())]
        lines.append(f"  time range    {self.first_time} .. {self.last_time} (UTC)")
        lines += [f"  {column:13s} {count:,} distinct" for column, count in self.entities.items()]
        lines += [f"  default       {column}: {count:,} row(s) without one got {self.default_notes[column]}"
                  for column, count in self.defaulted.items() if count]
        if self.flagged is not None:
            lines.append(f"  fraud flags   {self.flagged:,} of {self.rows_landed:,} landed transactions flagged "
                         f"({len(self.label_files_written)} label file(s) written: the labels of "
                         f"`tessera train --labels flag`)")
        if self.duplicate_ids:
            lines.append(f"  duplicate ids {self.duplicate_ids:,} delivered more than once, "
                         f"{self.duplicate_ids_differing:,} of them with differing rows: the batch job counts "
                         f"each once and keeps any one of its rows")
        if self.undecodable_rows:
            lines.append(f"  encoding      {self.undecodable_rows:,} row(s) hold bytes the encoding could not decode "
                         f"(U+FFFD): is the encoding right? read_options: {{encoding: ...}} in the mapping")
        return "\n".join(lines)


def run(cfg: Config, event_type: str, input_uri: str, mapping: Mapping, fmt: str,
        spark: SparkSession | None = None, now: datetime | None = None,
        max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION) -> IngestResult:
    now = now or datetime.now(timezone.utc)
    spark = spark or get_spark(cfg, "ingest", console_progress=sys.stderr.isatty())
    tracking.configure_tracking(cfg)
    source = read_input(spark, input_uri, fmt, mapping.read_options)
    if not source.columns or source.isEmpty():
        raise IngestError(f"{input_uri} has no data rows (an empty file, or a header only): nothing written")
    mapped = map_columns(source, mapping)
    checked = cleaning.validate_typed_events(mapped, event_type, now=now)
    reason = F.col(cleaning.REJECT_REASON)
    for name in [c for c in mapped.columns if c.startswith(UNPARSED)]:
        column = name[len(UNPARSED):]  # a time that did not parse is wrong_type, not missing
        reason = F.when((reason == f"{cleaning.MISSING_FIELD}:{column}") & F.col(name),
                        F.lit(f"{cleaning.WRONG_TYPE}:{column}")).otherwise(reason)
    if FLAG_UNPARSED in mapped.columns:  # a fraud flag that is no boolean: the row's last check
        reason = F.coalesce(reason, F.when(F.col(FLAG_UNPARSED), F.lit(FLAG_REASON)))
    checked = checked.withColumn(cleaning.REJECT_REASON, reason).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _land(cfg, spark, event_type, input_uri, mapping, fmt, checked, now, max_reject_fraction)
    finally:
        checked.unpersist()


def _land(cfg: Config, spark: SparkSession, event_type: str, input_uri: str, mapping: Mapping, fmt: str,
          checked: DataFrame, now: datetime, max_reject_fraction: float) -> IngestResult:
    defaulted_columns = [c[len(DEFAULTED):] for c in checked.columns if c.startswith(DEFAULTED)]
    has_flag = FRAUD_FLAG in checked.columns
    # One pass: rows and their hash sum (order-independent: the same rows in any order are the same import).
    counts = checked.groupBy(cleaning.REJECT_REASON).agg(
        F.count(F.lit(1)).alias("rows"), F.sum(F.col(ROW_HASH).cast("decimal(38,0)")).alias("hash_sum"),
        # U+FFFD: bytes the reader could not decode (a Latin-1 export read as UTF-8, say).
        F.count(F.when(F.col(SOURCE_ROW).contains(UNDECODABLE), 1)).alias("undecodable"),
        *[F.count(F.when(F.col(DEFAULTED + c), 1)).alias(DEFAULTED + c) for c in defaulted_columns],
        *([F.count(F.when(F.col(FRAUD_FLAG), 1)).alias(FRAUD_FLAG)] if has_flag else [])).collect()
    undecodable = sum(row["undecodable"] for row in counts)
    rows_read = sum(row["rows"] for row in counts)
    rejected = {row[cleaning.REJECT_REASON]: row["rows"] for row in counts if row[cleaning.REJECT_REASON]}
    rows_rejected = sum(rejected.values())
    defaulted = {c: sum(row[DEFAULTED + c] for row in counts) for c in defaulted_columns}
    flagged = sum(row[FRAUD_FLAG] for row in counts if row[cleaning.REJECT_REASON] is None) if has_flag else None
    content = f"{event_type}|{rows_read}|{sum(int(row['hash_sum'] or 0) for row in counts)}|{mapping.canonical}"
    import_id = hashlib.sha256(content.encode()).hexdigest()[:16]

    columns = SCHEMAS[event_type].fieldNames()
    accepted = checked.where(F.col(cleaning.REJECT_REASON).isNull())
    valid = accepted.select(*columns)
    entity_columns = sorted({EVENT_ENTITY_COLUMNS[event_type],
                             *(c for c in ("user_id", "merchant_id") if c in columns)}, key=columns.index)

    with tracking.feature_table_run(cfg, RUN_PREFIX + event_type,
                                    tags={"input": input_uri, "import_id": import_id, "format": fmt,
                                          "mapping": mapping.path}) as run:
        mlflow.log_metrics({"rows_read": rows_read, "rows_landed": rows_read - rows_rejected,
                            "rows_rejected": rows_rejected,
                            "reject_fraction": rows_rejected / rows_read,
                            **{f"rejected.{r.replace(':', '.')}": n for r, n in rejected.items()},
                            **{f"defaulted.{c}": n for c, n in defaulted.items()},
                            **({"fraud_flagged": flagged} if flagged is not None else {}),
                            "rows_with_undecodable_text": undecodable})
        dead = _file_dead_letters(cfg, spark, event_type, checked, import_id, input_uri, now)
        if rows_rejected / rows_read > max_reject_fraction:
            message = (f"{rows_rejected:,} of {rows_read:,} rows of {input_uri} rejected "
                       f"({rows_rejected / rows_read:.1%}), above the limit of {max_reject_fraction:.1%} "
                       f"(--max-reject-fraction): nothing landed. Reasons: "
                       + ", ".join(f"{r} {n:,}" for r, n in sorted(rejected.items(), key=lambda item: -item[1]))
                       + f"; the rows are in ingest_dead_letter_{event_type} (import_id {import_id})")
            tracking.fail_run([message])
            raise RejectLimitExceeded(message)

        # An id delivered more than once: the batch job counts it once, keeping any one of its rows.
        keys = [EVENT_ENTITY_COLUMNS[event_type], EVENT_ID_COLUMNS[event_type]]
        repeated = (valid.groupBy(*keys)
                    .agg(F.count(F.lit(1)).alias("rows"), F.count_distinct(F.xxhash64(*columns)).alias("versions"))
                    .agg(F.count(F.when(F.col("rows") > 1, 1)), F.count(F.when(F.col("versions") > 1, 1))).first())
        assert repeated is not None
        duplicate_ids, conflicting_ids = repeated[0], repeated[1]
        stats = valid.agg(F.date_format(F.min("event_time"), "yyyy-MM-dd HH:mm:ss"),
                          F.date_format(F.max("event_time"), "yyyy-MM-dd HH:mm:ss"),
                          *[F.count_distinct(c).alias(c) for c in entity_columns]).first()
        assert stats is not None
        mlflow.log_metrics({**{f"distinct_{c}": stats[c] for c in entity_columns},
                            "duplicate_ids": duplicate_ids, "duplicate_ids_differing": conflicting_ids})
        # Validated as the batch job validates: one row per (entity, id).
        deduplicated = cleaning.drop_duplicate_events(valid, EVENT_ENTITY_COLUMNS[event_type],
                                                      EVENT_ID_COLUMNS[event_type])
        outcome = validate(deduplicated, raw_events_suite(event_type, now))
        record_validation(outcome, RUN_PREFIX + event_type)
        if not outcome.success:
            tracking.fail_run(outcome.failed)
            raise ValidationFailed(f"raw {event_type} events of {input_uri}: " + "; ".join(outcome.failed))
        written, present = _write_history(cfg, spark, event_type, valid, import_id)
        label_files: list[str] = []
        if has_flag:  # the label of each landed transaction, beside the history (plumbing.training_sets)
            labels = accepted.select("transaction_id", "user_id", "event_time",
                                     F.col(FRAUD_FLAG).alias(FRAUD_FLAG_COLUMN))
            label_files, _ = _write_history(cfg, spark, FRAUD_LABELS, labels, import_id)
        mlflow.log_metrics({"files_written": len(written), "label_files_written": len(label_files)})
        result = IngestResult(import_id, rows_read, rows_read - rows_rejected, rejected,
                              stats[0], stats[1], {c: stats[c] for c in entity_columns},
                              written, present, dead, run.info.run_id, duplicate_ids, conflicting_ids,
                              undecodable, defaulted,
                              {c: default_note(event_type, c, mapping.defaults[c]) for c in defaulted},
                              flagged, label_files)
        mlflow.log_text(result.summary() + "\n", "summary.txt")
    return result


def _file_dead_letters(cfg: Config, spark: SparkSession, event_type: str, checked: DataFrame, import_id: str,
                       input_uri: str, now: datetime) -> int:
    """Append the import's rejected rows, unless this import filed them already; return how many were written."""
    table = dead_letter_table(cfg, event_type, "ingest")
    rejected = checked.where(F.col(cleaning.REJECT_REASON).isNotNull())
    if rejected.isEmpty():
        return 0
    if table.exists() and not table.read(spark).where(F.col("import_id") == import_id).isEmpty():
        return 0
    rows = rejected.select(
        F.lit(event_type).alias("event_type"), F.col(SOURCE_ROW).alias("raw"),
        F.col(cleaning.REJECT_REASON).alias("reject_reason"), F.col("event_time"),
        F.lit("ingest").alias("source"), F.lit(now).alias("filed_at"), F.current_timestamp().alias("arrived_at"),
        F.lit(import_id).alias("import_id"), F.lit(input_uri).alias("input"))
    table.write(rows, mode="append")
    return rejected.count()


def _write_history(cfg: Config, spark: SparkSession, event_type: str, valid: DataFrame,
                   import_id: str) -> tuple[list[str], list[str]]:
    """Write the valid rows to a staging folder, one file per UTC date, then move each file to
    ``<history>/<event type>/date=D/ingest-<import id>-NNN.parquet`` unless that file is
    there already (the same import id: the same rows). Returns (written, already there)."""
    staging = f"{cfg.events.history_uri.rstrip('/')}/{STAGING_FOLDER}/{import_id}-{uuid.uuid4().hex[:8]}"
    target = history_uri(cfg, event_type)
    (valid.withColumn("date", F.date_format("event_time", "yyyy-MM-dd"))
     .repartition("date").write.mode("overwrite").partitionBy("date").parquet(_spark_uri(staging)))
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    Path_ = jvm.org.apache.hadoop.fs.Path
    root = Path_(_spark_uri(staging))
    filesystem = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    staged: dict[str, list[Any]] = {}
    listing = filesystem.listFiles(root, True)
    while listing.hasNext():
        path = listing.next().getPath()
        if path.getName().endswith(".parquet") and not path.getName().startswith((".", "_")):
            staged.setdefault(path.getParent().getName(), []).append(path)
    written, present = [], []
    for folder in sorted(staged):  # "date=YYYY-MM-DD"
        for index, path in enumerate(sorted(staged[folder], key=lambda p: p.getName())):
            final = Path_(_spark_uri(f"{target}/{folder}/ingest-{import_id}-{index:03d}.parquet"))
            if filesystem.exists(final):
                present.append(final.toString())
                continue
            filesystem.mkdirs(final.getParent())
            if not filesystem.rename(path, final):
                raise IngestError(f"could not move {path.toString()} to {final.toString()}")
            written.append(final.toString())
    filesystem.delete(root, True)
    return written, present


def _spark_uri(uri: str) -> str:
    return "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri


# ------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest", description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="Example: ingest transactions exports/cards.csv --mapping docs/examples/ingest_transactions.yaml. "
               "The mapping file: docs/your_own_events.md, 'Bringing an export in: tessera ingest'. "
               "Exit codes: 0 landed, 1 validation failed or too many rows rejected (nothing landed), 2 bad usage "
               "or input (nothing written).")
    add_profile_option(parser)
    parser.add_argument("event_type", choices=EVENT_TYPES, help="the event type the rows are")
    parser.add_argument("input", help="a file, a glob or an s3:// URI (quote a glob)")
    parser.add_argument("--mapping", required=True, help="the YAML mapping of the declared columns")
    parser.add_argument("--format", choices=sorted(set(FORMATS.values())),
                        help="the input's format (default: the mapping's format:, else from the extension)")
    parser.add_argument("--max-reject-fraction", type=_fraction, default=DEFAULT_MAX_REJECT_FRACTION,
                        help="above this share of rejected rows nothing of the file lands (the dead letters are "
                             f"still filed); default {DEFAULT_MAX_REJECT_FRACTION}, 1 for no limit")
    return parser


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a fraction between 0 and 1")
    return value


def _format_of(input_uri: str, given: str | None, mapping: Mapping) -> str:
    if given or mapping.format:
        return given or mapping.format or ""
    suffix = Path(input_uri.rstrip("/*")).suffix.lower()
    if suffix not in FORMATS:
        raise IngestError(f"cannot tell the format of {input_uri} from its extension: "
                          f"give --format csv, parquet or jsonl")
    return FORMATS[suffix]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        mapping = load_mapping(args.mapping, args.event_type)
        fmt = _format_of(args.input, args.format, mapping)
    except IngestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    cfg = load_config_for_command(args.profile, "ingest")
    try:
        result = run(cfg, args.event_type, args.input, mapping, fmt, max_reject_fraction=args.max_reject_fraction)
    except IngestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        print(f"ingest: validation failed, nothing landed: {exc}", file=sys.stderr)
        return 1
    except RejectLimitExceeded as exc:
        print(f"ingest: too many rows rejected: {exc}", file=sys.stderr)
        return 1
    print(f"ingest {args.event_type} from {args.input} (profile {cfg.profile}), MLflow run {result.run_id}:")
    print(result.summary())
    if result.rejected:
        print(f"  rejected rows: table ingest_dead_letter_{args.event_type} (import_id {result.import_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
