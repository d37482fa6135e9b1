"""Feast's Redis online store, byte for byte: keys, hash fields and serialized values.

No feast import (a 5 s import): this runs inside Spark's Python workers.

Layout (Feast 0.67, ``entity_key_serialization_version: 3``; read from
``feast/infra/online_stores/redis.py``, ``helpers.py`` and ``key_encoding_utils.py``,
and pinned byte for byte against Feast by ``tests/test_online_store.py``)
--------------------------------------------------------------------------------------
* One Redis hash per (entity, project). Its key is the serialized entity key followed by
  the project name. For one string join key, integers as uint32 little-endian::

      1 (join keys) | 2 (ValueType.STRING) | len(join key) | join key (utf-8)
      | 2 (ValueType.STRING) | len(id) | id (utf-8) | project (utf-8)

  All feature views of an entity share its hash: ``user_transaction_features`` and
  ``user_activity_features`` both live in the ``user_id`` hash.
* A feature's hash field is murmur3_32 (seed 0, unsigned) of ``"<view>:<feature>"`` as 4
  little-endian bytes; its value a serialized ``feast.types.Value``: ``double_val`` for
  double features, ``int64_val`` for bigint ones, an empty Value for null (and for NaN,
  which Feast also stores as null).
* The field ``"_ts:<view>"`` (plain text) holds the row's event time, a serialized
  ``google.protobuf.Timestamp`` to the microsecond (Feast converts through datetime).
  Fields go in Feast's order (timestamp, then features), so even HGETALL's order matches.
"""
from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import mmh3
import numpy as np
import pyarrow as pa
from google.protobuf.timestamp_pb2 import Timestamp

from transformations.tables import FeatureTable

FEAST_PROJECT = "tessera"  # the project of feature_store.yaml; it ends every Redis key

# ---- Feast's wire format (tests compare every byte with Feast's own) --------------------
UINT32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d")
_VALUE_TYPE_STRING = 2  # feast.types.ValueType.STRING
INT64_TAG = b"\x20"  # feast.types.Value field 4 (int64_val), varint
DOUBLE_TAG = b"\x29"  # feast.types.Value field 5 (double_val), 64-bit
MICROS_PER_SECOND = 1_000_000


def entity_key_prefix(join_key: str) -> bytes:
    """The part of a Redis key before the entity id: it depends only on the join key."""
    name = join_key.encode()
    return UINT32(1) + UINT32(_VALUE_TYPE_STRING) + UINT32(len(name)) + name + UINT32(_VALUE_TYPE_STRING)


def redis_key(join_key: str, entity_id: str, project: str = FEAST_PROJECT) -> bytes:
    """Feast's Redis key of one entity (string join key), project included."""
    value = entity_id.encode()
    return entity_key_prefix(join_key) + UINT32(len(value)) + value + project.encode()


def feature_field(view: str, feature: str) -> bytes:
    """Feast's hash field of a feature: murmur3_32 of "view:feature", 4 bytes little-endian."""
    return UINT32(mmh3.hash(f"{view}:{feature}", signed=False))


def timestamp_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def encode_doubles(column: pa.ChunkedArray) -> list[bytes]:
    """Serialized Values of a double column: tag + 8 little-endian bytes, b"" for null and
    NaN. Built in one numpy pass, since this runs for most values written."""
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # null -> NaN
    packed = np.empty(len(values), dtype=[("tag", "u1"), ("value", "<f8")])  # 9 bytes a row
    packed["tag"] = DOUBLE_TAG[0]
    packed["value"] = values
    raw = packed.tobytes()
    encoded = [raw[start:start + 9] for start in range(0, len(raw), 9)]
    for row in np.flatnonzero(np.isnan(values)):
        encoded[row] = b""
    return encoded


@lru_cache(maxsize=1 << 16)  # counts repeat a lot, so most values come from the cache
def encode_bigint(value: int | None) -> bytes:
    """Serialized Value with int64_val: tag + varint (7 bits a byte, low first; a negative
    number is its 64-bit two's complement, 10 bytes)."""
    if value is None:
        return b""
    number = value & 0xFFFF_FFFF_FFFF_FFFF
    varint = bytearray()
    while number > 0x7F:
        varint.append((number & 0x7F) | 0x80)
        number >>= 7
    varint.append(number)
    return INT64_TAG + bytes(varint)


def encode_bigints(column: pa.ChunkedArray) -> list[bytes]:
    # pandas keeps an integer column with nulls as float: back to int64 (3.0 -> 3; 3.5 fails).
    return [encode_bigint(value) for value in column.cast(pa.int64()).to_pylist()]


COLUMN_ENCODERS = {"double": encode_doubles, "bigint": encode_bigints}


def decode_value(data: bytes | None) -> float | int | None:
    """A serialized feast Value of the kinds this project stores -> Python value."""
    if not data:
        return None
    if data[:1] == DOUBLE_TAG:
        return _DOUBLE.unpack_from(data, 1)[0]
    if data[:1] == INT64_TAG:
        number = 0
        for position, byte in enumerate(data[1:]):
            number |= (byte & 0x7F) << (7 * position)
        return number - (1 << 64) if number >= (1 << 63) else number
    raise ValueError(f"unsupported feast Value {data[:12]!r}: this project stores only double and int64")


def encode_timestamp(micros: int) -> bytes:
    """google.protobuf.Timestamp of microseconds since the epoch."""
    if micros < 0:
        raise ValueError("event times before 1970 are not supported (the Lua comparison reads seconds unsigned)")
    seconds, sub_micros = divmod(micros, MICROS_PER_SECOND)
    return Timestamp(seconds=seconds, nanos=sub_micros * 1000).SerializeToString()


def decode_timestamp(data: bytes) -> datetime:
    stamp = Timestamp.FromString(data)
    return datetime.fromtimestamp(stamp.seconds, tz=timezone.utc) + timedelta(microseconds=stamp.nanos // 1000)



# ---- one feature view's place in the hashes ----------------------------------------------
class View:
    """Everything the Redis layout needs about one feature table, derived once."""

    def __init__(self, table: FeatureTable, project: str):
        if table.ttl <= timedelta(0):
            raise ValueError(f"{table.name}: the online store needs a positive ttl, got {table.ttl}")
        self.table = table
        self.name = table.name
        self.join_key = table.entity_column
        self.ttl = table.ttl
        self.ttl_micros = table.ttl // timedelta(microseconds=1)
        self.key_prefix = entity_key_prefix(table.entity_column)
        self.project_bytes = project.encode()
        self.ts_field = timestamp_field(table.name)
        self.fields = {feature.name: feature_field(table.name, feature.name) for feature in table.features}

    def key(self, entity_id: str) -> bytes:
        if not isinstance(entity_id, str):
            raise TypeError(f"{self.join_key} must be a string (a Feast entity of type STRING), "
                            f"got {type(entity_id).__name__} {entity_id!r}")
        value = entity_id.encode()
        return self.key_prefix + UINT32(len(value)) + value + self.project_bytes

