"""Writing feature rows to Redis in Feast's layout: the atomic write script and the writers.

Writes: an older row never wins, atomically
-------------------------------------------
The Lua script :data:`WRITE_UNLESS_OLDER_LUA` compares each row's event time with the
stored ``_ts:<view>`` of its entity and writes the row unless it is older, inside Redis.
So an older value never overwrites a newer one and concurrent writers cannot interleave.
A row of the same instant does replace the stored one (Feast's rule is strictly newer):
the stream recomputes an entity's newest row when a late event for it arrives, and that
later computation has seen every event the earlier one had. Replaying a micro-batch
writes the same values again. One ``EVALSHA`` carries
``ROWS_PER_SCRIPT`` rows (a call per row costs Redis several times more); calls go out
pipelined, ``batch_size`` rows per round trip, the next chunk encoded while Redis works
on the previous one.

Redis Cluster (``redis.mode: cluster``): a script may only touch keys of one hash slot,
so there each call carries one row (one key), and the micro-batch's calls are grouped
by the node that holds each key's slot: one pipelined round trip per node per chunk,
all nodes' chunks sent before any reply is read. Newest-wins stays atomic per key. A
call a node refuses (its slot moved: MOVED, ASK, TRYAGAIN, CLUSTERDOWN) is sent again,
after the slot map is refreshed, through redis-py's cluster client, which follows the
redirection; a write of the same row twice leaves the same bytes, so this is safe.

Key expiry: a key expires when its last valid value does (see :mod:`plumbing.online_store`).
"""
from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TypeAlias

import pandas as pd
import pyarrow as pa
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from plumbing.config import Config
from plumbing.online_store.connections import RedisSettings, cluster_client, redis_client
from plumbing.online_store.layout import COLUMN_ENCODERS, FEAST_PROJECT, View, encode_timestamp
from transformations.tables import FeatureTable

DEFAULT_BATCH_SIZE = 2_000  # rows per pipelined round trip
# Rows per script call: a call blocks Redis (and so the API's reads) while it runs, about
# 1 ms for 50 rows of 21 features on this 2-core machine; fewer rows add per-call overhead.
ROWS_PER_SCRIPT = 50


WRITE_UNLESS_OLDER_LUA = """
-- Writes rows of one feature view, each unless older than the stored row of its entity
-- (a row of the same instant replaces it: it was recomputed with a late event).
-- KEYS: one entity hash per row.
-- ARGV: "_ts:<view>", the number of features F, the F feature fields; then per row: the
--       serialized Timestamp, the unix ms when the row stops being valid, F serialized values.
-- Returns how many rows were written (the others were older than the stored one).
local function decode_timestamp(bytes)
  -- google.protobuf.Timestamp: field 1 seconds (tag 8), field 2 nanos (tag 16), varints.
  local seconds, nanos, i = 0, 0, 1
  while i <= #bytes do
    local tag = string.byte(bytes, i)
    i = i + 1
    local value, scale, byte = 0, 1, 128
    while byte >= 128 do
      byte = string.byte(bytes, i)
      i = i + 1
      value = value + (byte % 128) * scale
      scale = scale * 128
    end
    if tag == 8 then seconds = value elseif tag == 16 then nanos = value end
  end
  return seconds, nanos
end

local function is_older(new_bytes, stored_bytes)
  local new_seconds, new_nanos = decode_timestamp(new_bytes)
  local old_seconds, old_nanos = decode_timestamp(stored_bytes)
  return new_seconds < old_seconds or (new_seconds == old_seconds and new_nanos < old_nanos)
end

local ts_field = ARGV[1]
local feature_count = tonumber(ARGV[2])
local args_per_row = 2 + feature_count
-- One HSET argument list for every row, in Feast's field order (the timestamp, then the
-- features): the fields stay, each row fills in its key, Timestamp and values.
local hset = {'HSET', false, ts_field, false}
for f = 1, feature_count do
  hset[3 + 2 * f] = ARGV[2 + f]
end
local written = 0
for row = 1, #KEYS do
  local key = KEYS[row]
  local at = 3 + feature_count + (row - 1) * args_per_row  -- this row's Timestamp
  local stored = redis.call('HGET', key, ts_field)
  if not stored or not is_older(ARGV[at], stored) then
    hset[2], hset[4] = key, ARGV[at]
    for f = 1, feature_count do
      hset[4 + 2 * f] = ARGV[at + 1 + f]
    end
    redis.call(unpack(hset))
    -- Only ever push the expiry later: the key also holds the entity's other views.
    -- PEXPIRETIME is -1 for a key without expiry, so a new key always gets one.
    local expires_at = tonumber(ARGV[at + 1])
    if redis.call('PEXPIRETIME', key) < expires_at then
      redis.call('PEXPIREAT', key, expires_at)
    end
    written = written + 1
  end
end
return written
"""
WRITE_UNLESS_OLDER_SHA = hashlib.sha1(WRITE_UNLESS_OLDER_LUA.encode()).hexdigest()


@dataclass
class WriteResult:
    written: int = 0
    skipped_older: int = 0    # the stored row was newer
    skipped_expired: int = 0  # already past the view's ttl when written

    def __add__(self, other: WriteResult) -> WriteResult:
        return WriteResult(self.written + other.written, self.skipped_older + other.skipped_older,
                           self.skipped_expired + other.skipped_expired)


Rows: TypeAlias = pd.DataFrame | pa.Table | pa.RecordBatch | Iterable[Mapping]


def _as_arrow(rows: Rows, table: FeatureTable) -> pa.Table:
    """The table's columns (entity, timestamp, features) of any supported input, as Arrow."""
    if isinstance(rows, pd.DataFrame):
        data = pa.Table.from_pandas(rows, preserve_index=False)
    elif isinstance(rows, pa.RecordBatch):
        data = pa.Table.from_batches([rows])
    elif isinstance(rows, pa.Table):
        data = rows
    else:
        data = pa.Table.from_pylist(list(rows))
    if data.num_rows == 0:
        return data
    missing = [name for name in table.columns if name not in data.column_names]
    if missing:
        raise ValueError(f"rows for {table.name} lack the columns {missing}")
    return data.select(table.columns)


def _epoch_micros(column: pa.ChunkedArray) -> list[int]:
    """Event times as microseconds since the epoch; a time without zone is taken as UTC."""
    if not pa.types.is_timestamp(column.type):
        raise TypeError(f"the timestamp column must be an Arrow timestamp, got {column.type}")
    # Truncates nanoseconds, as Feast's conversion through datetime does.
    return column.cast(pa.timestamp("us", tz=column.type.tz), safe=False).cast(pa.int64()).to_pylist()


@dataclass
class _Chunk:
    """The Redis commands for a slice of rows, and how to count their replies."""

    commands: list[tuple]
    rows_sent: int
    skipped_expired: int

    def read_result(self, connection: redis.Connection) -> WriteResult:
        replies = [connection.read_response() for _ in self.commands]
        written = sum(replies[1:])  # replies[0] answers SCRIPT LOAD
        return WriteResult(written=written, skipped_older=self.rows_sent - written,
                           skipped_expired=self.skipped_expired)


def _resp(argument: bytes) -> bytes:
    """One argument in Redis's wire protocol (RESP bulk string)."""
    return b"$%d\r\n%s\r\n" % (len(argument), argument)


_SCRIPT_LOAD_RESP = b"*3\r\n" + _resp(b"SCRIPT") + _resp(b"LOAD") + _resp(WRITE_UNLESS_OLDER_LUA.encode())


class _NodeChunk:
    """A cluster chunk's calls for one node (packed by hand: one key per call makes
    redis-py's packing of the same header fields per row cost more than the encoding),
    sent on a connection of that node."""

    __slots__ = ("connection", "parts", "pool", "rows")

    def __init__(self, pool: redis.ConnectionPool):
        self.pool = pool
        self.connection: redis.Connection | None = None
        # Loaded ahead, as on a single node: a node that restarted has an empty script cache.
        self.parts: list[bytes] = [_SCRIPT_LOAD_RESP]
        self.rows: list[tuple] = []  # per call: (key, Timestamp, expiry ms, values), for a resend

    def send(self) -> None:
        self.connection = self.pool.get_connection()
        self.connection.send_packed_command([b"".join(self.parts)])

    def read(self) -> tuple[int, list[tuple]]:
        """(rows written, the rows of the calls the node refused: a slot that moved)."""
        connection = self.connection
        assert connection is not None, "send first"
        written, refused = 0, []
        try:
            connection.read_response()  # SCRIPT LOAD: an error here is raised
            for row in self.rows:
                try:
                    written += connection.read_response()
                except redis.ResponseError:  # one reply, read whole: the connection stays in step
                    refused.append(row)
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse it as is
            raise
        finally:
            self.pool.release(connection)
            self.connection = None
        return written, refused


class _ClusterChunk:
    """The calls of a slice of rows, one key per call, grouped by the node of its slot."""

    def __init__(self, client: RedisCluster, view: View, chunk: pa.Table, now_ms: int):
        self.client = client
        self.view = view
        self.nodes: dict[str, _NodeChunk] = {}
        self.rows_sent = self.skipped_expired = 0
        keys = [view.key(entity_id) for entity_id in chunk.column(view.join_key).to_pylist()]
        event_micros = _epoch_micros(chunk.column(view.table.timestamp_column))
        value_columns = [COLUMN_ENCODERS[feature.dtype](chunk.column(feature.name))
                         for feature in view.table.features]
        # EVALSHA <sha> 1 <key> _ts:<view> F <F fields> <Timestamp> <expiry ms> <F values>
        call_head = b"*%d\r\n" % (8 + 2 * len(view.fields)) + _resp(b"EVALSHA") + \
            _resp(WRITE_UNLESS_OLDER_SHA.encode()) + _resp(b"1")
        fields_resp = _resp(view.ts_field) + _resp(b"%d" % len(view.fields)) + \
            b"".join(_resp(field) for field in view.fields.values())
        slots = client.nodes_manager.slots_cache
        nodes = self.nodes
        for key, micros, values in zip(keys, event_micros, zip(*value_columns, strict=True), strict=True):
            expires_at_ms = -(-(micros + view.ttl_micros) // 1000)  # rounded up
            if expires_at_ms <= now_ms:
                self.skipped_expired += 1
                continue
            node = slots[key_slot(key)][0]  # the slot's master
            node_chunk = nodes.get(node.name)
            if node_chunk is None:
                node_chunk = nodes[node.name] = _NodeChunk(client.get_redis_connection(node).connection_pool)
            stamp = encode_timestamp(micros)
            node_chunk.parts += (call_head, _resp(key), fields_resp, _resp(stamp), _resp(b"%d" % expires_at_ms),
                                 *map(_resp, values))
            node_chunk.rows.append((key, stamp, expires_at_ms, values))
            self.rows_sent += 1

    def send(self) -> None:
        for node_chunk in self.nodes.values():
            node_chunk.send()

    def read_result(self) -> WriteResult:
        written, refused, failure = 0, [], None
        for node_chunk in self.nodes.values():  # every node's replies, even after a failure
            try:
                node_written, node_refused = node_chunk.read()
            except BaseException as error:
                failure = failure or error
                continue
            written += node_written
            refused += node_refused
        if failure:
            raise failure
        if refused:  # the slot map changed: refresh it, let redis-py follow the redirections
            self.client.nodes_manager.initialize()
            view = self.view
            head = (view.ts_field, len(view.fields), *view.fields.values())
            for key, stamp, expires_at_ms, values in refused:
                written += self.client.execute_command("EVAL", WRITE_UNLESS_OLDER_LUA, 1, key, *head, stamp,
                                                       expires_at_ms, *values)
        return WriteResult(written=written, skipped_older=self.rows_sent - written,
                           skipped_expired=self.skipped_expired)

    def abandon(self) -> None:
        """Close the connections of a chunk sent but not read (another chunk failed)."""
        for node_chunk in self.nodes.values():
            if node_chunk.connection is not None:
                node_chunk.connection.disconnect()
                node_chunk.pool.release(node_chunk.connection)
                node_chunk.connection = None


def _encode_chunk(view: View, chunk: pa.Table, now_ms: int) -> _Chunk:
    """SCRIPT LOAD, then one EVALSHA of the write script per ``ROWS_PER_SCRIPT`` rows."""
    keys = [view.key(entity_id) for entity_id in chunk.column(view.join_key).to_pylist()]
    event_micros = _epoch_micros(chunk.column(view.table.timestamp_column))
    value_columns = [COLUMN_ENCODERS[feature.dtype](chunk.column(feature.name))
                     for feature in view.table.features]
    header = [view.ts_field, len(view.fields), *view.fields.values()]

    # Loaded ahead of the EVALSHAs on the same connection: after a Redis restart the
    # script cache is empty, and this keeps the writer working without a retry path.
    commands: list[tuple] = [("SCRIPT", "LOAD", WRITE_UNLESS_OLDER_LUA)]
    rows_sent = skipped_expired = 0
    call_keys: list[bytes] = []
    call_args: list = []
    for key, micros, values in zip(keys, event_micros, zip(*value_columns, strict=True), strict=True):
        expires_at_ms = -(-(micros + view.ttl_micros) // 1000)  # rounded up
        if expires_at_ms <= now_ms:
            skipped_expired += 1
            continue
        call_keys.append(key)
        call_args += (encode_timestamp(micros), expires_at_ms)
        call_args += values
        if len(call_keys) == ROWS_PER_SCRIPT:
            commands.append(("EVALSHA", WRITE_UNLESS_OLDER_SHA, len(call_keys), *call_keys, *header, *call_args))
            rows_sent += len(call_keys)
            call_keys, call_args = [], []
    if call_keys:
        commands.append(("EVALSHA", WRITE_UNLESS_OLDER_SHA, len(call_keys), *call_keys, *header, *call_args))
        rows_sent += len(call_keys)
    return _Chunk(commands, rows_sent, skipped_expired)


class OnlineStoreWriter:
    """Writes feature rows to Redis in Feast's layout; an older row never replaces a newer one.

    Cheap to build and to pickle (it holds only connection settings), so build it on the
    driver and use it inside ``foreachBatch``, ``foreachPartition`` or ``mapInArrow``:
    each process opens one connection pool on first use.
    """

    def __init__(self, cfg: Config, project: str = FEAST_PROJECT, batch_size: int = DEFAULT_BATCH_SIZE):
        self.settings = RedisSettings.from_config(cfg)
        self.project = project
        self.batch_size = batch_size

    def write(self, table: FeatureTable, rows: Rows, now: datetime | None = None) -> WriteResult:
        """Write ``rows`` (pandas, an Arrow table or batch, or dicts) of feature table ``table``.

        ``now`` decides which rows are already expired (default: the current time).
        """
        view = View(table, self.project)
        data = _as_arrow(rows, table)
        now_ms = int((now.timestamp() if now else time.time()) * 1000)
        if self.settings.cluster:
            return self._write_cluster(view, data, now_ms)
        client = redis_client(self.settings)
        assert isinstance(client, redis.Redis)  # a single Redis (not cluster mode)
        pool = client.connection_pool
        connection = pool.get_connection()
        result = WriteResult()
        try:
            # One chunk in flight: while Redis runs chunk n, this process encodes chunk n+1,
            # so client and server work overlap instead of adding up.
            in_flight: _Chunk | None = None
            for start in range(0, data.num_rows, self.batch_size):
                chunk = _encode_chunk(view, data.slice(start, self.batch_size), now_ms)
                connection.send_packed_command(connection.pack_commands(chunk.commands))
                if in_flight:
                    result += in_flight.read_result(connection)
                in_flight = chunk
            if in_flight:
                result += in_flight.read_result(connection)
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse this connection as is
            raise
        finally:
            pool.release(connection)
        return result

    def _write_cluster(self, view: View, data: pa.Table, now_ms: int) -> WriteResult:
        """As on a single node, one chunk in flight while the next is encoded; a chunk is
        one round trip per node that holds any of its keys."""
        client = cluster_client(self.settings)
        result = WriteResult()
        # Chunk n+1 goes out on other connections of the same nodes while n's replies wait.
        # Each call is atomic and keeps the newer row whatever the order, so the two may
        # interleave in Redis (only rows of one entity and the same instant, which the
        # jobs never write in one call, would then depend on the order).
        in_flight: list[_ClusterChunk] = []
        try:
            for start in range(0, data.num_rows, self.batch_size):
                chunk = _ClusterChunk(client, view, data.slice(start, self.batch_size), now_ms)
                in_flight.append(chunk)
                chunk.send()
                if len(in_flight) == 2:
                    result += in_flight.pop(0).read_result()
            while in_flight:
                result += in_flight[0].read_result()
                in_flight.pop(0)
        except BaseException:
            for chunk in in_flight:
                chunk.abandon()
            raise
        return result


def write_dataframe_online(df, table: FeatureTable, cfg: Config, project: str = FEAST_PROJECT) -> WriteResult:
    """Write the newest row per entity of a feature-table Spark DataFrame, from the
    executors (``mapInArrow``); only per-partition counts come back to the driver."""
    from pyspark.sql import functions as F

    newest = (df.groupBy(table.entity_column)
              .agg(F.max_by(F.struct(*table.columns), F.col(table.timestamp_column)).alias("row"))
              .select("row.*"))
    writer = OnlineStoreWriter(cfg, project)
    count_names = list(asdict(WriteResult()))

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        result = WriteResult()
        for batch in batches:
            result += writer.write(table, batch)
        yield pa.RecordBatch.from_pylist([asdict(result)])

    counts = newest.mapInArrow(write_partition, ", ".join(f"{name} long" for name in count_names))
    totals = counts.agg(*[F.sum(name).alias(name) for name in count_names]).first()
    return WriteResult(**{name: int(totals[name] or 0) for name in count_names})
