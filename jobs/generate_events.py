"""The event generator: synthetic card transactions, user activity and (late) chargebacks.

    python -m jobs.generate_events history [--events 1000000] [--days 7] [--out URI] ...
    python -m jobs.generate_events live [--rate 1000] [--duration 60] [--out DIR] ...
    tessera generate history|live ...          (the same, through the console command)

**history** writes Parquet (or ``--format jsonl``) files under ``<out>/<event_type>/``
(optionally ``date=YYYY-MM-DD/`` sub-folders), on a local path or ``s3://bucket/prefix``.
**live** sends events at ``--rate`` events/s where the profile's ``events.source`` says:
to the Kafka topics (``kafka``, the default: one topic per event type, one record per
JSON line, keyed by the entity the event belongs to - the user for transactions and
activity, the merchant for chargebacks - and acknowledged by the broker window by
window, ``--file-interval`` seconds each), or (``files``, or ``--out DIR``) into
``<landing_dir>/<event_type>/``, one JSON-lines file per window, each appearing
atomically (written as a hidden ``.name.tmp`` and renamed; Spark's file source ignores
names starting with a dot). Both get the same lines, malformed records included.

What the data looks like
- ``--users`` users, each with a home country, one or two usual devices, favourite
  merchants, a preferred channel mix and a spending profile (lognormal amounts).
- Traffic follows a daily cycle (busy afternoons and evenings, quiet nights, slightly
  quieter weekends) with short bursts. Activity comes in sessions: ``session_start``,
  usually a login (sometimes after a failed attempt), then page views, all sharing a
  ``session_id``. Legitimate noise blurs the fraud signals on purpose: people travel,
  buy a new phone, make two purchases in a row, and sometimes buy something expensive.
- Fraud incidents hit a small share of transactions (``--fraud-rate``), in three
  patterns: *account takeover* (a new device in a new country, usually after failed
  logins, then a burst of expensive purchases), *card testing* (a few tiny amounts and
  then several larger ones within minutes at unfamiliar merchants) and *one big
  purchase* far above the user's usual amounts. Windowed features (counts and amount
  statistics over 1h/24h/7d, distinct countries and devices, time since the previous
  transaction, amount against the 7-day mean) separate them from normal traffic.
- Labels arrive late, as real ones do: most fraudulent transactions, and a few
  legitimate ones (friendly fraud), get a chargeback 1-30 days later. Chargebacks that
  would arrive after the generated period are dropped.

Guarantees
- Deterministic: the same arguments and ``--seed`` give byte-identical files (live
  mode: with ``--start-time``); another seed gives other data. Users, events, malformed
  records and late events draw from separate random streams, so switching malformed
  records on changes only the chosen records.
- ``--events N`` is exactly the number of transaction + activity records written
  (chargebacks come on top).
- ``--malformed-fraction f`` makes exactly ``round(f * N)`` of those records malformed,
  spread at random over the run and round-robin over the kinds the format can carry
  (reasons as in ``transformations.cleaning``): JSON lines carry ``broken_json``,
  ``missing_field``, ``wrong_type``, ``negative_amount`` (transactions) and
  ``future_timestamp`` (years after the period end, so any validator clock flags it);
  typed Parquet carries the last three only (a missing field is a null). Chargebacks
  are never malformed.
- Memory stays flat from 10k to 10M+ events: the period is cut into slices of about
  ``--chunk-events`` events (live: one slice per file), each generated with vectorised
  numpy, written and freed. Each slice gets its exact share of the events, in
  proportion to the expected traffic, and all of them lie inside its time window, so
  every file - and every ``date=`` partition - holds the events of its own window
  (a session or burst that would run past the end starts a little earlier instead).
  Only the chargebacks wait in a buffer, for their arrival time. (The user table grows
  with ``--users``, whose default is ``events / 200``: a few bytes per user.)

Live mode specifics
- Event times follow the clock (``--start-time`` or the wall clock); a file is renamed
  into place when the wall clock reaches the end of its window, so no event is ahead of
  the moment its file appears. With ``--file-interval`` of about a second, a session's
  or burst's minutes are squeezed into its window (counts per hour stay right).
- ``--late-fraction f`` makes exactly ``round(f * good records)`` events late: their
  ``event_time`` lies up to ``--max-lateness-s`` before the window of their file.
- Chargebacks arrive 1-30 days after their transaction, so a run shorter than a day
  writes none (they are counted as dropped).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jobs.events.encoding import TableBuilder
from jobs.events.simulation import (
    DAY_MS,
    JSON_KINDS,
    MINUTE_MS,
    NOT_MALFORMED,
    SECOND_MS,
    TYPED_KINDS,
    Columns,
    EventGenerator,
    Settings,
    Slice,
    column_length,
    daily_intensity,
    expected_traffic,
)
from jobs.events.sinks import HistoryWriter, KafkaWriter, LandingWriter, live_destination
from plumbing.config import add_profile_option, load_config
from plumbing.kafka import KafkaError, KafkaTopics
from transformations import cleaning
from transformations.schemas import (
    ACTIVITY,
    CHARGEBACKS,
    TRANSACTIONS,
)
from transformations.times import as_utc


@dataclass
class Summary:
    mode: str
    out: str
    fmt: str
    counts: Counter = field(default_factory=Counter)        # rows per event type
    malformed: Counter = field(default_factory=Counter)     # rows per malformed kind
    fraud_transactions: int = 0
    fraud_chargebacks: int = 0
    false_chargebacks: int = 0
    dropped_chargebacks: int = 0
    late_events: int = 0
    files: int = 0
    elapsed_s: float = 0.0
    unit: str = "files"  # what ``files`` counts: files, or Kafka records

    @property
    def events(self) -> int:
        """Transactions + activity: what --events counts."""
        return self.counts[TRANSACTIONS] + self.counts[ACTIVITY]

    def text(self) -> str:
        per_s = self.events / self.elapsed_s if self.elapsed_s > 0 else float("inf")
        malformed = ", ".join(f"{kind} {n:,}" for kind, n in sorted(self.malformed.items())) or "none"
        return "\n".join([
            f"generated {self.mode}: {self.events:,} events "
            f"(transactions {self.counts[TRANSACTIONS]:,}, activity {self.counts[ACTIVITY]:,}) "
            f"+ {self.counts[CHARGEBACKS]:,} chargebacks",
            f"  fraud transactions: {self.fraud_transactions:,}; chargebacks: {self.fraud_chargebacks:,} fraud, "
            f"{self.false_chargebacks:,} false, {self.dropped_chargebacks:,} dropped (after the period)",
            f"  malformed: {sum(self.malformed.values()):,} ({malformed})"
            + (f"; late: {self.late_events:,}" if self.mode == "live" else ""),
            f"  written to: {self.out} ({self.fmt}, {self.files} {self.unit})",
            f"  elapsed: {self.elapsed_s:.2f} s, {per_s:,.0f} events/s",
        ])


def _run(generator: EventGenerator, windows: Iterator[Slice], total: int, emit, summary: Summary,
         progress: bool) -> None:
    """Generate each window and hand its three batches to ``emit``; keep the tallies."""
    with tqdm(total=total, unit="ev", unit_scale=True, desc=f"generate {summary.mode}", disable=not progress,
              file=sys.stderr, mininterval=0.5) as bar:
        for window in windows:
            transactions, activity, chargebacks = generator.generate(window)
            emit(window, transactions, activity, chargebacks)
            summary.counts.update({TRANSACTIONS: column_length(transactions), ACTIVITY: column_length(activity),
                                   CHARGEBACKS: column_length(chargebacks)})
            for columns in (transactions, activity):
                for code, n in zip(*np.unique(columns["malformed_kind"], return_counts=True), strict=True):
                    if code != NOT_MALFORMED:
                        summary.malformed[cleaning.REJECT_KINDS[code]] += int(n)
                summary.late_events += int(columns.get("late", np.zeros(0, bool)).sum())
            summary.fraud_transactions += int(transactions["fraud"].sum())
            summary.fraud_chargebacks += int(chargebacks["fraud"].sum())
            summary.false_chargebacks += int((~chargebacks["fraud"]).sum())
            bar.update(column_length(transactions) + column_length(activity))
            bar.set_postfix(tx=summary.counts[TRANSACTIONS], act=summary.counts[ACTIVITY],
                            cb=summary.counts[CHARGEBACKS], bad=sum(summary.malformed.values()), refresh=False)
    summary.dropped_chargebacks = generator.dropped_chargebacks


def history_windows(total: int, start_ms: int, days: int, chunk_events: int) -> list[Slice]:
    """Cut each day into slices of about ``chunk_events`` events (equal expected traffic,
    so busy afternoons get shorter slices than nights; whole minutes), and share
    ``total`` exactly among all slices in proportion to their expected traffic."""
    per_day = max(1, -(-total // days // chunk_events))  # ceil(total / days / chunk_events)
    minutes = np.arange(DAY_MS // MINUTE_MS)
    share_by_minute = np.cumsum(daily_intensity(minutes)) / daily_intensity(minutes).sum()
    cuts = np.unique(np.concatenate([[0], np.searchsorted(share_by_minute, np.arange(1, per_day) / per_day) + 1,
                                     [len(minutes)]]))
    bounds = [(start_ms + d * DAY_MS + a * MINUTE_MS, start_ms + d * DAY_MS + b * MINUTE_MS)
              for d in range(days) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    traffic = np.cumsum([expected_traffic(a, b) for a, b in bounds])
    ends = np.round(total * traffic / traffic[-1]).astype(np.int64)
    counts = np.diff(np.concatenate([[0], ends]))
    return [Slice(i, a, b, int(n), i == len(bounds) - 1)
            for i, ((a, b), n) in enumerate(zip(bounds, counts, strict=True))]


def live_windows(total: int, start_ms: int, rate: float, interval_s: float) -> Iterator[Slice]:
    """One window per file interval, ``rate`` events per second, ``total`` in all."""
    per_window = rate * interval_s
    n_windows = max(1, int(np.ceil(total / per_window)))
    interval_ms = int(round(interval_s * SECOND_MS))
    done = 0
    for k in range(n_windows):
        upto = total if k == n_windows - 1 else min(total, int(round(per_window * (k + 1))))
        yield Slice(k, start_ms + k * interval_ms, start_ms + (k + 1) * interval_ms, upto - done, k == n_windows - 1)
        done = upto


def generate_history(out: str, *, events: int, days: int = 7, start_date: dt.date = dt.date(2026, 1, 1),
                     users: int | None = None, seed: int = 42, fmt: str = "parquet",
                     partition_by_date: bool = False, malformed_fraction: float = 0.0, fraud_rate: float = 0.01,
                     chunk_events: int = 200_000, overwrite: bool = False, cfg=None,
                     progress: bool = True) -> Summary:
    """Write ``events`` transaction + activity records for ``days`` days from ``start_date``."""
    began = time.monotonic()
    start_ms = int(dt.datetime.combine(start_date, dt.time(), dt.timezone.utc).timestamp() * SECOND_MS)
    end_ms = start_ms + days * DAY_MS
    settings = Settings(seed=seed, n_users=users or default_users(events), fraud_rate=fraud_rate,
                        malformed_fraction=malformed_fraction,
                        malformed_kinds=TYPED_KINDS if fmt == "parquet" else JSON_KINDS)
    generator = EventGenerator(settings, events, start_ms, end_ms)
    writer = HistoryWriter(out, fmt, partition_by_date, overwrite, cfg)
    builder = TableBuilder(generator.population, generator.run_tag, all_nullable=malformed_fraction > 0)

    def emit(window: Slice, transactions: Columns, activity: Columns, chargebacks: Columns) -> None:
        for event_type, columns, table in ((TRANSACTIONS, transactions, builder.transactions(transactions)),
                                           (ACTIVITY, activity, builder.activity(activity)),
                                           (CHARGEBACKS, chargebacks, builder.chargebacks(chargebacks))):
            text = builder.json_lines(event_type, table, columns, generator.malformed_rng) if fmt == "jsonl" else None
            writer.write(event_type, window, table, text)

    summary = Summary("history", out, fmt + (", partitioned by date" if partition_by_date else ""))
    _run(generator, iter(history_windows(events, start_ms, days, chunk_events)), events, emit, summary, progress)
    summary.files = writer.files
    summary.elapsed_s = time.monotonic() - began
    return summary


def generate_live(out: str | KafkaTopics, *, rate: float, events: int | None = None, duration_s: float | None = None,
                  file_interval_s: float = 1.0, start_time: dt.datetime | None = None,
                  late_fraction: float = 0.0, max_lateness_s: float = 60.0, users: int = 1000, seed: int = 42,
                  malformed_fraction: float = 0.0, fraud_rate: float = 0.01, realtime: bool = True,
                  progress: bool = True) -> Summary:
    """Send JSON lines at ``rate`` events/s: to Kafka (``out`` a :class:`KafkaTopics`, see
    :func:`live_destination`) or as files into the landing folder ``out``.

    Event times follow ``start_time`` (default: the wall clock at the start); a window's
    events are sent (its file written, its records acknowledged) when the wall clock
    reaches the end of the window, so an event never has a time ahead of the moment it
    arrives (unless ``start_time`` says otherwise, or ``realtime=False`` sends everything
    at once).
    """
    began_wall = time.time()
    began = time.monotonic()
    total = events if events is not None else int(round(rate * (duration_s or 0.0)))
    if total < 1:
        raise ValueError("nothing to generate: give --events or --duration with --rate")
    clock_ms = int((start_time.timestamp() if start_time else began_wall) * SECOND_MS)
    windows = list(live_windows(total, clock_ms, rate, file_interval_s))
    settings = Settings(seed=seed, n_users=users, fraud_rate=fraud_rate, malformed_fraction=malformed_fraction,
                        malformed_kinds=JSON_KINDS, late_fraction=late_fraction,
                        max_lateness_ms=max(1, int(max_lateness_s * SECOND_MS)))
    generator = EventGenerator(settings, total, clock_ms, windows[-1].end_ms)
    writer = KafkaWriter(out) if isinstance(out, KafkaTopics) else LandingWriter(out, generator.run_tag)
    builder = TableBuilder(generator.population, generator.run_tag, all_nullable=True)

    def emit(window: Slice, transactions: Columns, activity: Columns, chargebacks: Columns) -> None:
        texts = [(event_type, table, builder.json_lines(event_type, table, columns, generator.malformed_rng))
                 for event_type, columns, table in (
                     (TRANSACTIONS, transactions, builder.transactions(transactions)),
                     (ACTIVITY, activity, builder.activity(activity)),
                     (CHARGEBACKS, chargebacks, builder.chargebacks(chargebacks)))]
        if realtime:  # wait for the end of the window on the wall clock
            due = began + (window.index + 1) * file_interval_s
            time.sleep(max(0.0, due - time.monotonic()))
        for event_type, table, text in texts:
            writer.write(event_type, window, text, table)
        writer.window_done()

    summary = Summary("live", str(writer), "jsonl", unit=getattr(writer, "unit", "files"))
    _run(generator, iter(windows), total, emit, summary, progress)
    summary.files = writer.files
    summary.elapsed_s = time.monotonic() - began
    return summary


def default_users(events: int) -> int:
    """About 200 events per user: a few dozen transactions each per week at the defaults."""
    return int(min(1_000_000, max(50, events // 200)))


# ===================================================================== the command
def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction between 0 and 1")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _instant(text: str) -> dt.datetime:
    return as_utc(dt.datetime.fromisoformat(text))


def configure_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``history`` and ``live`` subcommands to ``parser`` (its own or the console command's)."""
    common = argparse.ArgumentParser(add_help=False)
    add_profile_option(common)
    common.add_argument("--seed", type=int, default=42, help="random seed; same seed, same bytes (default 42)")
    common.add_argument("--users", type=_positive_int, help="number of users (history default: events/200; "
                                                            "live default: 1000)")
    common.add_argument("--fraud-rate", type=_fraction, default=0.01,
                        help="share of transactions that are fraudulent (default 0.01)")
    common.add_argument("--malformed-fraction", type=_fraction, default=0.0,
                        help="exact share of malformed records (default 0)")
    common.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")

    modes = parser.add_subparsers(dest="mode", required=True, metavar="history|live")
    history = modes.add_parser(
        "history", parents=[common], help="write a period of past events as Parquet (or JSON lines)",
        description="Write --events transaction and activity events over --days days, plus the chargebacks "
                    "that arrive within the period, under <out>/<event_type>/.")
    history.add_argument("--out", help="local folder or s3://bucket/prefix (default: events.history_uri of the "
                                       "profile)")
    history.add_argument("--events", type=_positive_int, default=100_000,
                         help="transaction + activity events, exactly (default 100000)")
    history.add_argument("--days", type=_positive_int, default=7, help="length of the period (default 7)")
    history.add_argument("--start-date", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1),
                         help="first day, UTC (default 2026-01-01)")
    history.add_argument("--format", choices=("parquet", "jsonl"), default="parquet",
                         help="parquet (typed; malformed kinds limited to what types can hold) or jsonl "
                              "(every malformed kind)")
    history.add_argument("--partition-by-date", action="store_true", help="date=YYYY-MM-DD sub-folders")
    history.add_argument("--chunk-events", type=_positive_int, default=200_000,
                         help="about how many events to generate and write at a time (memory bound)")
    history.add_argument("--overwrite", action="store_true", help="replace files already in the output")

    live = modes.add_parser(
        "live", parents=[common], help="send JSON lines to the Kafka topics (or the landing folder) at a given rate",
        description="Send JSON lines at --rate events/s for --duration seconds (or until --events), one "
                    "window per --file-interval seconds: records on the profile's Kafka topics (events.source: "
                    "kafka), or one file per window and event type in the landing folder (events.source: files, "
                    "or --out).")
    live.add_argument("--out", help="write files into this landing folder, whatever the profile's events.source "
                                    "(default: the profile's Kafka topics, or its events.landing_dir with "
                                    "source files)")
    live.add_argument("--rate", type=_positive_float, default=1000.0, help="events per second (default 1000)")
    amount = live.add_mutually_exclusive_group()
    amount.add_argument("--duration", type=_positive_float, help="seconds to run (default 60)")
    amount.add_argument("--events", type=_positive_int, help="stop after exactly this many events")
    live.add_argument("--file-interval", type=_positive_float, default=1.0,
                      help="seconds per window: a file, or a flush of Kafka records (default 1)")
    live.add_argument("--start-time", type=_instant,
                      help="clock of the first event, ISO-8601 (default: now); fixes the content")
    live.add_argument("--late-fraction", type=_fraction, default=0.0,
                      help="exact share of good events that arrive late (default 0)")
    live.add_argument("--max-lateness-s", type=_positive_float, default=60.0,
                      help="how late a late event can be, seconds (default 60)")
    live.add_argument("--as-fast-as-possible", dest="realtime", action="store_false",
                      help="do not wait for the wall clock between files")
    return parser


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m jobs.generate_events",
        description="Generate synthetic transactions, user activity and chargebacks, seeded and deterministic.")
    return configure_parser(parser)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.profile)
    if args.mode == "history":
        summary = generate_history(
            args.out or cfg.events.history_uri, events=args.events, days=args.days, start_date=args.start_date,
            users=args.users, seed=args.seed, fmt=args.format, partition_by_date=args.partition_by_date,
            malformed_fraction=args.malformed_fraction, fraud_rate=args.fraud_rate,
            chunk_events=args.chunk_events, overwrite=args.overwrite, cfg=cfg, progress=args.progress)
    else:
        summary = generate_live(
            args.out or live_destination(cfg), rate=args.rate, events=args.events,
            duration_s=args.duration if args.events is None else None,
            file_interval_s=args.file_interval, start_time=args.start_time, late_fraction=args.late_fraction,
            max_lateness_s=args.max_lateness_s, users=args.users or 1000, seed=args.seed,
            malformed_fraction=args.malformed_fraction, fraud_rate=args.fraud_rate, realtime=args.realtime,
            progress=args.progress)
    print(summary.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    # Through the console command the help should say how it was called.
    parser = build_parser("tessera generate" if Path(sys.argv[0]).name == "tessera" else None)
    args = parser.parse_args(argv)
    if args.mode == "live" and args.events is None and args.duration is None:
        args.duration = 60.0
    try:
        return run(args)
    except (FileExistsError, ValueError) as exc:
        print(f"generate_events: {exc}", file=sys.stderr)
        return 2
    except KafkaError as exc:  # no broker (`tessera up`), a record not delivered
        print(f"generate_events: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
