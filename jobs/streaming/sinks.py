"""The lake sinks: a micro-batch's bronze events and dead letters, appended once (a re-run
after a crash finds its rows already there and skips the append).
"""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
from deltalake import DeltaTable
from pyspark.sql import types as T

from plumbing.event_tables import BATCH_ID, QUERY_ID
from plumbing.lake import LakeTable


def holds_batch(table: LakeTable, query_id: str, batch_id: int) -> bool:
    """Whether ``table`` already holds rows of this query's micro-batch ``batch_id``.

    Read from the file statistics in the Delta log, not from the data: each write of a
    micro-batch makes files holding that micro-batch only, so their min statistics name it
    (delta-spark keeps a 32-character prefix of a string's: the query id's first 32 of 36).
    """
    if not table.exists():
        return False
    files = pa.table(DeltaTable(table.uri, storage_options=table.storage_options).get_add_actions(flatten=True))
    if f"min.{BATCH_ID}" not in files.column_names:
        return False
    return any(query is not None and query_id.startswith(query) and batch == batch_id
               for query, batch in zip(files.column(f"min.{QUERY_ID}").to_pylist(),
                                       files.column(f"min.{BATCH_ID}").to_pylist(), strict=True))


def append_once(table: LakeTable, rows: pa.Table, schema: T.StructType, query_id: str, batch_id: int,
                may_hold_it: bool) -> float:
    """Append ``rows`` stamped with the micro-batch, unless the table already holds it (a
    re-run after a crash: only possible when ``may_hold_it``). Returns the seconds taken."""
    started = time.monotonic()
    if may_hold_it and holds_batch(table, query_id, batch_id):
        return time.monotonic() - started
    stamped = (rows.append_column(BATCH_ID, pa.array(np.full(rows.num_rows, batch_id, dtype=np.int64)))
               .append_column(QUERY_ID, pa.array([query_id] * rows.num_rows, pa.string())))
    table.append_arrow(stamped, schema)
    return time.monotonic() - started
