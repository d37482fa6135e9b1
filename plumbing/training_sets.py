"""Point-in-time training sets on Spark: labelled events + every feature as of their time.

    labels = labelled_transactions(spark, cfg, start, end)
    training_set, versions = build_training_set(spark, cfg, labels, "fraud_model_v1")
    digest = training_set_hash(training_set)

What "as of" means is defined once, in the ``transformations`` package docstring: the
value of a feature table for an entity as of time T is the entity's newest row with
``event_timestamp`` strictly before T, or null (every feature of that table) when there
is none or it is older than the table's ttl: valid when ``T - ttl <= event_timestamp < T``.
A row at exactly T is not used, so a transaction never sees the row its own event made.

How the join works (one sort per entity, no exploding join)
    For each entity (user, merchant), the label rows and the rows of every feature table
    keyed by that entity are put in ONE frame, partitioned by the entity and sorted by
    time. A feature row carries its values packed in one struct column of its table (null
    in every other row). ``last(struct, ignorenulls)`` over the frame from the partition
    start to the current row then gives each label row the newest row of each table
    before it. At equal times a label row sorts BEFORE the feature rows, so the frame ends
    strictly before T. The struct is what makes this correct with nullable features:
    ``last(ignorenulls)`` on each column separately would skip a legitimately null value
    and return an older one. The ttl is then a comparison of the found row's time with T.

    Cost: one shuffle and sort of (labels + feature rows in the time range) per entity,
    O(n log n), linear in memory with spill: two sorts for the three tables of the fraud
    model. A range join (each label joined to every feature row of its entity within the
    ttl, then the newest kept) would instead produce labels x rows-per-ttl pairs: with a
    30-day merchant ttl, thousands per label. The label columns travel through the
    frames, so no join back on a row id is needed.
    Caveat: one entity's rows are sorted in one task, so a huge entity (a merchant with
    tens of millions of rows) makes one long task; salting by time bucket would fix that
    and is not needed at this scale.

Request-time feature
    ``txn_amount_to_mean_7d_ratio`` in a training set is the value the API computes at
    request time: the event's own ``amount`` divided by the as-of ``txn_amount_mean_7d``,
    by the one definition ``transformations.on_demand.amount_to_mean_ratio``. It replaces
    the stored column of the same name, whose as-of value belongs to the user's previous
    transaction.

Labels (``labelled_transactions``), from one of two sources
    ``chargebacks`` (the default): label = 1 when a chargeback for the transaction arrived
    less than ``maturity`` after the transaction. Every transaction gets the same
    observation window, so early and late transactions in the range are labelled alike (a
    plain "any chargeback so far" would label the last days of a range with fewer
    chargebacks, and a time-based holdout there would look worse than it is).
    ``flag``: a fraud flag of the export, landed by ``tessera ingest`` (a mapping's
    ``fraud_flag:``) in ``<events.history_uri>/fraud_labels/``. A flag carries no time of
    its own, so the caller states when it is known: ``maturity`` after the transaction
    ("known 30 days after"). label = 1 when any landed flag of the transaction says fraud.
    Either way a transaction is usable only once it is ``maturity`` old: the raw history
    must reach ``end + maturity``, which is checked, so no label is used before it could
    have been known.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from pyspark.sql import Column, DataFrame, SparkSession, Window, WindowSpec
from pyspark.sql import functions as F

from plumbing.config import Config
from plumbing.lake import LakeTable
from plumbing.raw_events import _parquet_files, read_history
from transformations import cleaning
from transformations.catalog import FEATURE_TABLES, feature_refs
from transformations.on_demand import amount_to_mean_ratio
from transformations.schemas import CHARGEBACKS, EVENT_ENTITY_COLUMNS, EVENT_ID_COLUMNS, TRANSACTIONS
from transformations.tables import FeatureTable
from transformations.times import as_utc

EVENT_TIME = "event_time"   # the labelled events' time: features are taken as of it
LABEL = "label"
AMOUNT = "amount"
# The request-time feature: this event's amount over the user's as-of 7-day mean amount.
REQUEST_RATIO = "txn_amount_to_mean_7d_ratio"
RATIO_TABLE, RATIO_MEAN = "user_transaction_features", "txn_amount_mean_7d"
# How long after a transaction its chargeback still counts as its label (the generator's
# chargebacks arrive 1 + Exp(5) days later: about 70% within 7 days). Real card networks
# allow months; use a longer maturity where the history allows it.
DEFAULT_LABEL_MATURITY = timedelta(days=7)
# The label sources, and where ``tessera ingest`` lands a fraud flag (beside the event types'
# folders of the history, which the batch job alone reads): one row per landed transaction.
CHARGEBACK_LABELS, FLAG_LABELS = "chargebacks", "flag"
LABEL_SOURCES = (CHARGEBACK_LABELS, FLAG_LABELS)
FRAUD_LABELS = "fraud_labels"
FRAUD_FLAG_COLUMN = "is_fraud"
LABELLED_COLUMNS = ["transaction_id", "user_id", "merchant_id", EVENT_TIME, AMOUNT,
                    "currency", "country", "device_id", "channel", LABEL]

# Internal columns of the as-of frame.
_KIND = "_kind"          # 0 = label row, 1 = feature row: the tie-break at equal times
_MICROS = "_micros"      # the ordering key: the row's time in microseconds
_ROW_TIME = "_row_time"  # the feature row's time inside the struct
_LABEL_ROW, _FEATURE_ROW = 0, 1


@dataclass(frozen=True)
class _Request:
    """What to read from one feature table: the features to output, plus helpers."""

    table: FeatureTable
    features: list[str]   # output columns, in request order
    read: list[str]       # columns taken as of the event (features + what the ratio needs)


# ------------------------------------------------------------------ the training set
def build_training_set(spark: SparkSession, cfg: Config, labelled_events: DataFrame,
                       features: str | Sequence[str | FeatureTable],
                       versions: dict[str, int] | None = None) -> tuple[DataFrame, dict[str, int]]:
    """Attach every requested feature, as of each event's ``event_time``, to ``labelled_events``.

    ``features``: a feature service name (``"fraud_model_v1"``), or a list of feature
    references ``"<table>:<feature>"`` and/or whole ``FeatureTable`` objects.
    ``versions``: the Delta version to read per table name; a table not named is read at
    its latest version. Returns the training set (lazy) and the version read of every
    table, to record for lineage.

    ``labelled_events`` needs ``event_time`` and the entity column of each table
    (``user_id``, ``merchant_id``), plus ``amount`` when the request-time ratio is asked
    for. Its columns come out unchanged, followed by the features in request order. They
    are read twice (their time range first, to prune the tables' dates): persist them if
    they are expensive to compute.
    """
    requests = _resolve(features)
    _check_columns(labelled_events, requests)
    versions_used = {request.table.name: _version(cfg, request.table, (versions or {}).get(request.table.name))
                     for request in requests}
    event_range = _event_range(labelled_events)

    training_set = labelled_events
    for entity in dict.fromkeys(request.table.entity_column for request in requests):
        tables = [(request, _feature_rows(spark, cfg, request, versions_used[request.table.name], event_range))
                  for request in requests if request.table.entity_column == entity]
        training_set = _attach_as_of(training_set, entity, tables)

    output: list[str | Column] = [*labelled_events.columns]
    for request in requests:
        for feature in request.features:
            if feature == REQUEST_RATIO:
                output.append(amount_to_mean_ratio(F.col(AMOUNT), F.col(RATIO_MEAN)).alias(REQUEST_RATIO))
            else:
                output.append(F.col(feature))
    return training_set.select(*output), versions_used


def _resolve(features: str | Sequence[str | FeatureTable]) -> list[_Request]:
    """Group the requested features by table, in first-seen order."""
    if isinstance(features, str):
        features = feature_refs(features)
    by_table: dict[str, list[str]] = {}
    for item in features:
        if isinstance(item, FeatureTable):
            by_table.setdefault(item.name, []).extend(item.feature_names)
            continue
        table_name, _, feature = item.partition(":")
        if table_name not in FEATURE_TABLES or feature not in FEATURE_TABLES[table_name].feature_names:
            raise ValueError(f"unknown feature reference {item!r}: expected '<table>:<feature>' of "
                             f"{', '.join(FEATURE_TABLES)}")
        by_table.setdefault(table_name, []).append(feature)

    names = [feature for chosen in by_table.values() for feature in chosen]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"features requested twice: {', '.join(repeated)}")
    requests = []
    for table_name, chosen in by_table.items():
        read = [feature for feature in chosen if feature != REQUEST_RATIO]
        if table_name == RATIO_TABLE and REQUEST_RATIO in chosen and RATIO_MEAN not in read:
            read.append(RATIO_MEAN)
        requests.append(_Request(FEATURE_TABLES[table_name], chosen, read))
    return requests


def _check_columns(labelled_events: DataFrame, requests: list[_Request]) -> None:
    needed = {EVENT_TIME, *(request.table.entity_column for request in requests)}
    if any(REQUEST_RATIO in request.features for request in requests):
        needed.add(AMOUNT)
    missing = sorted(needed - set(labelled_events.columns))
    if missing:
        raise ValueError(f"the labelled events lack column(s) {', '.join(missing)}")
    added = {c for request in requests for c in [*request.read, *request.features]}
    clashing = sorted(added & set(labelled_events.columns))
    if clashing:
        raise ValueError(f"the labelled events already have feature column(s) {', '.join(clashing)}")


def _version(cfg: Config, table: FeatureTable, wanted: int | None) -> int:
    """The version to read: the one asked for, else the latest (pinned now, so a commit
    landing during the build cannot change what is read)."""
    return wanted if wanted is not None else _lake_table(cfg, table).version()


def _lake_table(cfg: Config, table: FeatureTable) -> LakeTable:
    return LakeTable.for_config(cfg, table.name, time_column=table.timestamp_column)


def _event_range(labelled_events: DataFrame) -> tuple[datetime | None, datetime | None]:
    """The events' earliest and latest time: two scalars, so only the dates that can hold
    an as-of row are read from the feature tables."""
    micros = F.unix_micros(F.col(EVENT_TIME))
    bounds = labelled_events.agg(F.min(micros).alias("first"), F.max(micros).alias("last")).first()
    assert bounds is not None  # an aggregation without groups has one row
    if bounds["first"] is None:
        return None, None
    return _from_micros(bounds["first"]), _from_micros(bounds["last"])


def _feature_rows(spark: SparkSession, cfg: Config, request: _Request, version: int,
                  event_range: tuple[datetime | None, datetime | None]) -> DataFrame:
    """The table's rows that can be as-of rows of the events: ``[first - ttl, last)``."""
    first, last = event_range
    if first is None:  # no events: nothing can match, read nothing
        first = last = datetime(1970, 1, 1, tzinfo=timezone.utc)
    table = request.table
    rows = _lake_table(cfg, table).read(spark, version=version, start=first - table.ttl, end=last)
    return rows.select(F.col(table.entity_column), F.col(table.timestamp_column), *[F.col(c) for c in request.read])


def _as_of_window(entity: str) -> WindowSpec:
    """An entity's rows in time order, from its first row to the current one. At one
    instant label rows sort before feature rows, so a label row's frame holds only the
    feature rows strictly before its time."""
    return (Window.partitionBy(entity).orderBy(_MICROS, _KIND)
            .rowsBetween(Window.unboundedPreceding, Window.currentRow))


def _attach_as_of(events: DataFrame, entity: str, tables: list[tuple[_Request, DataFrame]]) -> DataFrame:
    """``events`` plus each request's columns as of each event's time, null past the table's
    ttl: one sort for all the tables keyed by ``entity``."""
    label_rows = events.select(
        "*",
        F.lit(_LABEL_ROW).alias(_KIND),
        F.unix_micros(F.col(EVENT_TIME)).alias(_MICROS),
    )
    frame = label_rows
    for request, rows in tables:
        table = request.table
        feature_rows = rows.select(
            F.col(entity),
            F.lit(_FEATURE_ROW).alias(_KIND),
            F.unix_micros(F.col(table.timestamp_column)).alias(_MICROS),
            _as_of_struct(table, request).alias(_as_of(table)),
        )
        # The union leaves the columns a side lacks null: a label row's structs, a feature
        # row's label columns and the other tables' structs.
        frame = frame.unionByName(feature_rows, allowMissingColumns=True)

    # An entity with no rows before the event finds nothing: its features stay null.
    window = _as_of_window(entity)
    found = (frame
             .select("*", *[F.last(F.col(_as_of(request.table)), ignorenulls=True).over(window)
                            .alias(_newest(request.table)) for request, _ in tables])
             .where(F.col(_KIND) == _LABEL_ROW))
    as_of_columns = []
    for request, _ in tables:
        newest = _newest(request.table)
        # Valid when T - ttl <= row time (< T by the frame).
        fresh = (F.unix_micros(F.col(f"{newest}.{_ROW_TIME}"))
                 >= F.col(_MICROS) - F.lit(_micros(request.table.ttl)))
        as_of_columns += [F.when(fresh, F.col(f"{newest}.{c}")).alias(c) for c in request.read]
    return found.select(*[F.col(c) for c in events.columns], *as_of_columns)


def _as_of(table: FeatureTable) -> str:
    """The column holding a feature row of ``table`` packed in a struct (null elsewhere)."""
    return f"_as_of_{table.name}"


def _newest(table: FeatureTable) -> str:
    """The column holding the newest ``_as_of`` struct of ``table`` before the label row."""
    return f"_newest_{table.name}"


def _as_of_struct(table: FeatureTable, request: _Request) -> Column:
    return F.struct(F.col(table.timestamp_column).alias(_ROW_TIME), *[F.col(c) for c in request.read])


# ------------------------------------------------------------------ the content hash
def training_set_hash(df: DataFrame) -> str:
    """A deterministic, row-order-independent hash of ``df``'s content and schema (32 hex).

    Computed on the executors: each row gets two 64-bit xxhash64 values (over every
    column, each preceded by its null flag, so ``(null, 1)`` and ``(1, null)`` differ);
    their exact sums (as decimals, no overflow), the row count and the schema are hashed
    with sha256 on the driver. Sums make it a multiset hash: duplicated rows count.

    Caveat: this is a fingerprint, not a cryptographic hash. Two different training sets
    collide only when both 64-bit sums agree: about 2^-64 or less for unrelated changes,
    but the sums are linear, so content crafted to cancel out could collide.
    """
    cells = [part for c in df.columns for part in (F.col(c).isNull(), F.col(c))]
    totals = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.xxhash64(*cells).cast("decimal(38,0)")).alias("sum_a"),
        # A salt at the front changes every step of the hash chain: a second, independent hash.
        F.sum(F.xxhash64(F.lit("tessera"), *cells).cast("decimal(38,0)")).alias("sum_b"),
    ).first()
    assert totals is not None  # an aggregation without groups has one row
    text = f"{df.schema.simpleString()}|{totals['rows']}|{totals['sum_a'] or 0}|{totals['sum_b'] or 0}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# ------------------------------------------------------------------ labels
def labelled_transactions(spark: SparkSession, cfg: Config, start: datetime, end: datetime,
                          maturity: timedelta = DEFAULT_LABEL_MATURITY,
                          source: str = CHARGEBACK_LABELS) -> DataFrame:
    """The valid transactions with ``start <= event_time < end``, labelled (``LABELLED_COLUMNS``).

    ``source`` ``chargebacks``: ``label`` is 1 when a chargeback for the transaction
    arrived (its ``event_time``) less than ``maturity`` after the transaction, else 0.
    ``flag``: ``label`` is 1 when an ingested fraud flag of the transaction says fraud,
    the flag being known ``maturity`` after the transaction. Raises ValueError when the raw
    history ends before ``end + maturity``: the last transactions' labels could not have
    been known yet, so their zeros would be unknowns; and, for flags, when none was ingested.
    """
    if source not in LABEL_SOURCES:
        raise ValueError(f"unknown label source {source!r}: one of {', '.join(LABEL_SOURCES)}")
    start, end = as_utc(start), as_utc(end)
    label_cutoff = end + maturity
    _, history_end = history_bounds(spark, cfg)
    if history_end is None or history_end < label_cutoff:
        known = (f"chargebacks up to {label_cutoff.isoformat()} (maturity {maturity})" if source == CHARGEBACK_LABELS
                 else f"their flags, known {maturity / timedelta(days=1):g} days after each, up to "
                      f"{label_cutoff.isoformat()}")
        raise ValueError(f"labels are not mature: transactions up to {end.isoformat()} need {known}, but the "
                         f"history ends at {history_end.isoformat() if history_end else 'nothing'}")

    transactions = _valid_events(spark, cfg, TRANSACTIONS, start, end, label_cutoff)
    if source == FLAG_LABELS:
        flags = (_fraud_flags(spark, cfg, start, end).groupBy("user_id", "transaction_id")
                 .agg(F.max(F.col(FRAUD_FLAG_COLUMN).cast("int")).alias("flagged")))
        return (transactions.join(flags, on=["user_id", "transaction_id"], how="left")
                .select(*[F.col(c) for c in LABELLED_COLUMNS if c != LABEL],
                        F.coalesce(F.col("flagged"), F.lit(0)).cast("int").alias(LABEL)))
    chargebacks = _valid_events(spark, cfg, CHARGEBACKS, start, label_cutoff, label_cutoff)
    first_arrival = (chargebacks.groupBy(F.col("transaction_id"))
                     .agg(F.min(F.unix_micros(F.col(EVENT_TIME))).alias("chargeback_micros")))
    in_time = F.col("chargeback_micros") < F.unix_micros(F.col(EVENT_TIME)) + F.lit(_micros(maturity))
    return (transactions.join(first_arrival, on="transaction_id", how="left")
            .select(*[F.col(c) for c in LABELLED_COLUMNS if c != LABEL],
                    F.coalesce(in_time, F.lit(False)).cast("int").alias(LABEL)))


def _fraud_flags(spark: SparkSession, cfg: Config, start: datetime, end: datetime) -> DataFrame:
    """The ingested fraud flags of the transactions of [start, end): user_id, transaction_id,
    is_fraud. A transaction without one is not fraud; none at all is an error (the flags
    were not ingested, or under another history)."""
    uri = f"{cfg.events.history_uri.rstrip('/')}/{FRAUD_LABELS}"
    files = _parquet_files(spark, uri)
    if not files:
        raise ValueError(f"no fraud flags under {uri}: ingest the transactions with a mapping that has "
                         f"fraud_flag: (docs/your_own_events.md), or train with --labels chargebacks")
    flags = spark.read.option("recursiveFileLookup", "true").parquet(*files)
    return (flags.where((F.col(EVENT_TIME) >= F.lit(start)) & (F.col(EVENT_TIME) < F.lit(end)))
            .select("user_id", "transaction_id", FRAUD_FLAG_COLUMN))


def history_bounds(spark: SparkSession, cfg: Config) -> tuple[datetime | None, datetime | None]:
    """The period the raw transaction history covers, in whole UTC days: midnight of its
    oldest transaction's day, and midnight after its newest one's (histories are written
    by day). (None, None) for an empty history."""
    bounds = read_history(spark, cfg, TRANSACTIONS).agg(
        F.min(F.unix_micros(F.col(EVENT_TIME))).alias("first"),
        F.max(F.unix_micros(F.col(EVENT_TIME))).alias("last")).first()
    assert bounds is not None  # an aggregation without groups has one row
    if bounds["first"] is None:
        return None, None
    first, last = _from_micros(bounds["first"]), _from_micros(bounds["last"])
    first_day = first.replace(hour=0, minute=0, second=0, microsecond=0)
    return first_day, last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)


def _valid_events(spark: SparkSession, cfg: Config, event_type: str,
                  start: datetime, end: datetime, now: datetime) -> DataFrame:
    """Valid, de-duplicated raw events in [start, end): the batch job's own cleaning. (The
    history also hands over the rows filed under the date folders of the range whatever their
    time, the end's day included: kept out here, so no transaction of ``end``'s day is
    labelled before its label is mature.)"""
    checked = cleaning.validate_typed_events(read_history(spark, cfg, event_type, start, end), event_type, now=now)
    valid, _ = cleaning.split_valid(checked)
    valid = valid.where((F.col(EVENT_TIME) >= F.lit(start)) & (F.col(EVENT_TIME) < F.lit(end)))
    return cleaning.drop_duplicate_events(valid, EVENT_ENTITY_COLUMNS[event_type], EVENT_ID_COLUMNS[event_type])


def _micros(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1)


def _from_micros(micros: int) -> datetime:
    """A UTC datetime from microseconds since the epoch. (Collected Spark timestamps come
    back in the driver's local zone; integers do not.)"""
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=micros)

