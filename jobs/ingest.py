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
  the batch job reads them like any other history file.

Idempotent by content: the import id is a hash of the input's rows and of the mapping, so
ingesting the same export with the same mapping again names the same files, which are
already there: nothing is added (the dead letters of an import are filed once too).
Files are written to a staging folder first and moved into place one per date, so an
ingest that fails leaves what earlier ingests landed as it was. The raw-events suite
(Great Expectations) runs on what would land and is recorded in MLflow with the summary
(run ``ingest.<event type>``); a failed suite lands nothing.

The mapping file is documented in docs/your_own_events.md ("Bringing an export in").

Exit codes: 0 landed (rejected rows, if any, are in the dead-letter table); 1 the
validation suite failed, nothing landed; 2 bad usage or unusable input (a mapping naming a
column the input lacks, an empty file, no file at the path): nothing written.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import yaml
from pyspark import StorageLevel
from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from expectations.runner import record_validation, validate
from expectations.suites import raw_events_suite
from plumbing import tracking
from plumbing.config import Config, add_profile_option, load_config_for_command
from plumbing.event_tables import dead_letter_table
from plumbing.raw_events import history_uri
from plumbing.spark import get_spark
from transformations import cleaning
from transformations.schemas import EVENT_ENTITY_COLUMNS, EVENT_ID_COLUMNS, EVENT_TYPES, SCHEMAS

FORMATS = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
RUN_PREFIX = "ingest."
STAGING_FOLDER = "_ingest_staging"  # under events.history_uri, beside (not inside) the event types' folders
_SOURCE_ROW = "_source_row"
_ROW_HASH = "_row_hash"
UNDECODABLE = "\ufffd"  # what a reader puts for bytes its encoding cannot decode
_UNPARSED = "_unparsed_"  # + time column: the source had a value the time format did not parse


class IngestError(Exception):
    """Unusable input or mapping: nothing was written. The message says what and where."""


class ValidationFailed(Exception):
    """The raw-events suite failed on the rows that would land: nothing landed."""


# ------------------------------------------------------------------ the mapping
@dataclass(frozen=True)
class Source:
    """Where one declared column comes from: a source column, a constant or a SQL expression."""
    kind: str  # "column" | "constant" | "expr"
    value: Any
    line: int  # in the mapping file, for messages
    time_format: str | None = None
    time_zone: str | None = None


@dataclass(frozen=True)
class Mapping:
    path: str
    event_type: str
    columns: dict[str, Source]
    read_options: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    canonical: str = ""  # the mapping as sorted JSON: part of the import id

    def describe(self, target: str) -> str:
        return f"{self.path}, line {self.columns[target].line}, key '{target}'"


def load_mapping(path: str, event_type: str) -> Mapping:
    """Parse and check a mapping file (IngestError naming the line on any problem)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except OSError as exc:
        raise IngestError(f"cannot read the mapping {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise IngestError(f"the mapping {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("columns"), dict):
        raise IngestError(f"the mapping {path} needs a 'columns:' section (declared column: source)")
    known = {"event_type", "columns", "read_options", "format", "time_format", "time_zone"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise IngestError(f"the mapping {path} has unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    if data.get("event_type", event_type) != event_type:
        raise IngestError(f"the mapping {path} is for {data['event_type']!r}, not {event_type!r}")
    assert isinstance(node, yaml.MappingNode)
    lines = {key.value: key.start_mark.line + 1
             for top_key, top_value in node.value if top_key.value == "columns"
             for key, _ in top_value.value}

    schema = SCHEMAS[event_type]
    declared = schema.fieldNames()
    columns: dict[str, Source] = {}
    for target, spec in data["columns"].items():
        line = lines.get(target, 0)
        if target not in declared:
            raise IngestError(f"{path}, line {line}: '{target}' is not a column of {event_type} "
                              f"(declared: {', '.join(declared)})")
        options = spec if isinstance(spec, dict) else {"column": spec}
        kinds = [kind for kind in ("column", "constant", "expr") if kind in options]
        extra = sorted(set(options) - {"column", "constant", "expr", "time_format", "time_zone"})
        if len(kinds) != 1 or extra or (kinds[0] != "constant" and not isinstance(options[kinds[0]], str)):
            raise IngestError(f"{path}, line {line}, key '{target}': give a source column name, or exactly one "
                              f"of column:, constant:, expr: (with time_format:, time_zone: for times)")
        columns[target] = Source(kinds[0], options[kinds[0]], line,
                                 options.get("time_format", data.get("time_format")),
                                 options.get("time_zone", data.get("time_zone")))
    missing = [f.name for f in schema.fields if not f.nullable and f.name not in columns]
    if missing:
        raise IngestError(f"the mapping {path} has no entry for the required column(s) {', '.join(missing)} "
                          f"of {event_type} (under columns:)")
    fmt = data.get("format")
    if fmt is not None and fmt not in set(FORMATS.values()):
        raise IngestError(f"the mapping {path}: format {fmt!r} is not one of csv, parquet, jsonl")
    return Mapping(path, event_type, columns, {str(k): str(v) for k, v in (data.get("read_options") or {}).items()},
                   fmt, json.dumps(data, sort_keys=True, default=str))


# ------------------------------------------------------------------ reading and mapping
def read_input(spark: SparkSession, uri: str, fmt: str, read_options: dict[str, str]) -> DataFrame:
    """The input as Spark reads it: CSV with a header and every column a string (ids keep
    their leading zeros; the cast is validation's), Parquet with its own types, JSON lines."""
    path = "s3a://" + uri[len("s3://"):] if uri.startswith("s3://") else uri
    options = {"header": "true", "inferSchema": "false", "multiLine": "false", "mode": "PERMISSIVE",
               **read_options} if fmt == "csv" else dict(read_options)
    reader = spark.read.options(**options)
    try:
        if fmt == "csv":
            return reader.csv(path)
        if fmt == "parquet":
            return reader.parquet(path)
        return reader.json(path)
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc.getCondition()):
            raise IngestError(f"no file at {uri}") from None
        if "UNABLE_TO_INFER_SCHEMA" in str(exc.getCondition()):
            raise IngestError(f"{uri} has no data (an empty file?): nothing written") from None
        raise


def _quoted(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def map_columns(source: DataFrame, mapping: Mapping) -> DataFrame:
    """The declared columns from the mapping, plus the source row (as JSON, for dead letters),
    its hash (for the import id) and, per time column, whether its text failed to parse."""
    schema = SCHEMAS[mapping.event_type]
    selected: list[Column] = []
    unparsed: list[Column] = []
    for f in schema.fields:
        spec = mapping.columns.get(f.name)
        if spec is None:  # an optional column the export lacks
            selected.append(F.lit(None).cast(f.dataType).alias(f.name))
            continue
        column = _resolve(source, mapping, f.name, spec)
        if f.dataType == T.TimestampType():
            column, failed = _as_instant(source, column, spec)
            unparsed.append(failed.alias(_UNPARSED + f.name))
        selected.append(column.alias(f.name))
    source_columns = [_quoted(name) for name in source.columns]
    return source.select(*selected, *unparsed,
                         F.to_json(F.struct(*source_columns)).alias(_SOURCE_ROW),
                         F.xxhash64(*source_columns).alias(_ROW_HASH))


def _resolve(source: DataFrame, mapping: Mapping, target: str, spec: Source) -> Column:
    if spec.kind == "constant":
        return F.lit(spec.value)
    if spec.kind == "column":
        if spec.value not in source.columns:
            raise IngestError(f"no column '{spec.value}' in the input, named by {mapping.describe(target)}; "
                              f"{_input_columns(source)}")
        return _quoted(spec.value)
    try:
        column = F.expr(spec.value)
        with _quiet_analysis_errors():
            _ = source.select(column).schema  # analysed now: an unknown column fails here, by name
    except AnalysisException as exc:
        missing = exc.getMessageParameters() or {}
        name = missing.get("objectName", "")
        what = f"no column {name} in the input" if name else f"the expression does not work: {exc.getCondition()}"
        raise IngestError(f"{what}, used by {mapping.describe(target)} ({spec.value}); "
                          f"{_input_columns(source)}") from None
    return column


@contextmanager
def _quiet_analysis_errors() -> Iterator[None]:
    """PySpark logs every analysis error with its stack trace to stderr; here the error is
    expected and turned into one line, so its loggers stay quiet meanwhile."""
    loggers = [logging.getLogger(name) for name in ("SQLQueryContextLogger", "DataFrameQueryContextLogger")]
    before = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    try:
        yield
    finally:
        for logger, disabled in zip(loggers, before, strict=True):
            logger.disabled = disabled


def _input_columns(source: DataFrame) -> str:
    names = source.columns
    listed = "the input has the columns " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
    if len(names) == 1 and any(sep in names[0] for sep in ";\t|"):
        listed += " (one column: is the delimiter right? read_options: {sep: ...} in the mapping)"
    return listed


def _as_instant(source: DataFrame, column: Column, spec: Source) -> tuple[Column, Column]:
    """A UTC instant from text (parsed with the time format) or a naive timestamp (read in the
    source time zone, DST included: to_utc_timestamp); an instant stays as it is. Returns the
    instant and whether a present value failed to parse."""
    stored = source.select(column).schema.fields[0].dataType
    if isinstance(stored, T.StringType):
        text = F.trim(column)
        parsed = (F.try_to_timestamp(text, F.lit(spec.time_format)) if spec.time_format
                  else text.try_cast(T.TimestampType()))
        failed = text.isNotNull() & (text != "") & parsed.isNull()
    elif isinstance(stored, T.TimestampNTZType):
        parsed, failed = column.cast(T.TimestampType()), F.lit(False)
    else:  # an instant already (or a type validation will judge)
        return column, F.lit(False)
    if spec.time_zone:
        parsed = F.to_utc_timestamp(parsed, spec.time_zone)
    return parsed, failed


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

    def summary(self) -> str:
        lines = [f"  rows read     {self.rows_read:,}",
                 f"  rows landed   {self.rows_landed:,} ({len(self.files_written)} file(s) written, "
                 f"{len(self.files_already_there)} already there: import {self.import_id})",
                 f"  rows rejected {sum(self.rejected.values()):,}"]
        lines += [f"    {reason:32s} {count:,}" for reason, count in sorted(self.rejected.items())]
        lines.append(f"  time range    {self.first_time} .. {self.last_time} (UTC)")
        lines += [f"  {column:13s} {count:,} distinct" for column, count in self.entities.items()]
        if self.duplicate_ids:
            lines.append(f"  duplicate ids {self.duplicate_ids:,} delivered more than once, "
                         f"{self.duplicate_ids_differing:,} of them with differing rows: the batch job counts "
                         f"each once and keeps any one of its rows")
        if self.undecodable_rows:
            lines.append(f"  encoding      {self.undecodable_rows:,} row(s) hold bytes the encoding could not decode "
                         f"(U+FFFD): is the encoding right? read_options: {{encoding: ...}} in the mapping")
        return "\n".join(lines)


def run(cfg: Config, event_type: str, input_uri: str, mapping: Mapping, fmt: str,
        spark: SparkSession | None = None, now: datetime | None = None) -> IngestResult:
    now = now or datetime.now(timezone.utc)
    spark = spark or get_spark(cfg, "ingest", console_progress=sys.stderr.isatty())
    tracking.configure_tracking(cfg)
    source = read_input(spark, input_uri, fmt, mapping.read_options)
    if not source.columns or source.isEmpty():
        raise IngestError(f"{input_uri} has no data rows (an empty file, or a header only): nothing written")
    mapped = map_columns(source, mapping)
    checked = cleaning.validate_typed_events(mapped, event_type, now=now)
    reason = F.col(cleaning.REJECT_REASON)
    for name in [c for c in mapped.columns if c.startswith(_UNPARSED)]:
        column = name[len(_UNPARSED):]  # a time that did not parse is wrong_type, not missing
        reason = F.when((reason == f"{cleaning.MISSING_FIELD}:{column}") & F.col(name),
                        F.lit(f"{cleaning.WRONG_TYPE}:{column}")).otherwise(reason)
    checked = checked.withColumn(cleaning.REJECT_REASON, reason).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _land(cfg, spark, event_type, input_uri, mapping, fmt, checked, now)
    finally:
        checked.unpersist()


def _land(cfg: Config, spark: SparkSession, event_type: str, input_uri: str, mapping: Mapping, fmt: str,
          checked: DataFrame, now: datetime) -> IngestResult:
    # One pass: rows and their hash sum (order-independent: the same rows in any order are the same import).
    counts = checked.groupBy(cleaning.REJECT_REASON).agg(
        F.count(F.lit(1)).alias("rows"), F.sum(F.col(_ROW_HASH).cast("decimal(38,0)")).alias("hash_sum"),
        # U+FFFD: bytes the reader could not decode (a Latin-1 export read as UTF-8, say).
        F.count(F.when(F.col(_SOURCE_ROW).contains(UNDECODABLE), 1)).alias("undecodable")).collect()
    undecodable = sum(row["undecodable"] for row in counts)
    rows_read = sum(row["rows"] for row in counts)
    rejected = {row[cleaning.REJECT_REASON]: row["rows"] for row in counts if row[cleaning.REJECT_REASON]}
    content = f"{event_type}|{rows_read}|{sum(int(row['hash_sum'] or 0) for row in counts)}|{mapping.canonical}"
    import_id = hashlib.sha256(content.encode()).hexdigest()[:16]

    columns = SCHEMAS[event_type].fieldNames()
    valid = checked.where(F.col(cleaning.REJECT_REASON).isNull()).select(*columns)
    entity_columns = sorted({EVENT_ENTITY_COLUMNS[event_type],
                             *(c for c in ("user_id", "merchant_id") if c in columns)}, key=columns.index)
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

    with tracking.feature_table_run(cfg, RUN_PREFIX + event_type,
                                    tags={"input": input_uri, "import_id": import_id, "format": fmt,
                                          "mapping": mapping.path}) as run:
        mlflow.log_metrics({"rows_read": rows_read, "rows_landed": rows_read - sum(rejected.values()),
                            "rows_rejected": sum(rejected.values()),
                            **{f"rejected.{r.replace(':', '.')}": n for r, n in rejected.items()},
                            **{f"distinct_{c}": stats[c] for c in entity_columns},
                            "duplicate_ids": duplicate_ids, "duplicate_ids_differing": conflicting_ids,
                            "rows_with_undecodable_text": undecodable})
        dead = _file_dead_letters(cfg, spark, event_type, checked, import_id, input_uri, now)
        # Validated as the batch job validates: one row per (entity, id).
        deduplicated = cleaning.drop_duplicate_events(valid, EVENT_ENTITY_COLUMNS[event_type],
                                                      EVENT_ID_COLUMNS[event_type])
        outcome = validate(deduplicated, raw_events_suite(event_type, now))
        record_validation(outcome, RUN_PREFIX + event_type)
        if not outcome.success:
            tracking.fail_run(outcome.failed)
            raise ValidationFailed(f"raw {event_type} events of {input_uri}: " + "; ".join(outcome.failed))
        written, present = _write_history(cfg, spark, event_type, valid, import_id)
        mlflow.log_metric("files_written", len(written))
        result = IngestResult(import_id, rows_read, rows_read - sum(rejected.values()), rejected,
                              stats[0], stats[1], {c: stats[c] for c in entity_columns},
                              written, present, dead, run.info.run_id, duplicate_ids, conflicting_ids,
                              undecodable)
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
        F.lit(event_type).alias("event_type"), F.col(_SOURCE_ROW).alias("raw"),
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
               "Exit codes: 0 landed, 1 validation failed (nothing landed), 2 bad usage or input (nothing written).")
    add_profile_option(parser)
    parser.add_argument("event_type", choices=EVENT_TYPES, help="the event type the rows are")
    parser.add_argument("input", help="a file, a glob or an s3:// URI (quote a glob)")
    parser.add_argument("--mapping", required=True, help="the YAML mapping of the declared columns")
    parser.add_argument("--format", choices=sorted(set(FORMATS.values())),
                        help="the input's format (default: the mapping's format:, else from the extension)")
    return parser


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
        result = run(cfg, args.event_type, args.input, mapping, fmt)
    except IngestError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return 2
    except ValidationFailed as exc:
        print(f"ingest: validation failed, nothing landed: {exc}", file=sys.stderr)
        return 1
    print(f"ingest {args.event_type} from {args.input} (profile {cfg.profile}), MLflow run {result.run_id}:")
    print(result.summary())
    if result.rejected:
        print(f"  rejected rows: table ingest_dead_letter_{args.event_type} (import_id {result.import_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
