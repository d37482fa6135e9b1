"""The online store: Redis in exactly the layout of Feast's Redis online store, written
and read without Feast on the hot path.

The streaming job (``foreachBatch``), the batch publish and the API use this module;
Feast's SDK, ``feast serve`` and ``feast materialize`` read and write the same bytes.
It never imports feast (a 5 s import), because it runs inside Spark's Python workers.

The package, a module per concern:

* :mod:`plumbing.online_store.layout`: Feast's Redis layout and value encoding, byte for byte;
* :mod:`plumbing.online_store.connections`: where Redis is, and one connection pool per process;
* :mod:`plumbing.online_store.writer`: the atomic write (its Lua script) and the writers;
* :mod:`plumbing.online_store.reader`: the pipelined reader and its decoding.

Callers import the names below from ``plumbing.online_store``.

TTL: what Feast 0.67 does, and what we do
-----------------------------------------
Feast's ``get_online_features`` on Redis ignores a view's ttl (only its pre-computed
vector path checks one); its only expiry is ``key_ttl_seconds``: ``EXPIRE`` after each
of its writes, one number for all views. We expire a key when its last valid value
expires, at ``max(event time + view ttl)`` over the views in it, and a write only ever
moves that later; so Feast's readers stop seeing an entity once all its values are
stale. Our reader applies each view's ttl on read: a value past it is ``expired`` even
while the key lives on for another view. Valid means ``now - ttl <= event time`` (the
"as of" rule of ``transformations``); the key expiry is rounded up to the millisecond.
A row already past its ttl when written is skipped and counted (``skipped_expired``):
storing it would expire the key at once, and the entity's other views with it.
"""
from plumbing.online_store.connections import RedisSettings, redis_client
from plumbing.online_store.layout import (
    FEAST_PROJECT,
    decode_timestamp,
    decode_value,
    encode_bigint,
    encode_bigints,
    encode_doubles,
    encode_timestamp,
    entity_key_prefix,
    feature_field,
    redis_key,
    timestamp_field,
)
from plumbing.online_store.reader import EXPIRED, MISSING, PRESENT, FeatureValue, OnlineStoreReader
from plumbing.online_store.writer import (
    DEFAULT_BATCH_SIZE,
    OnlineStoreWriter,
    WriteResult,
    write_dataframe_online,
)

__all__ = [
    "DEFAULT_BATCH_SIZE", "EXPIRED", "FEAST_PROJECT", "MISSING", "PRESENT", "FeatureValue", "OnlineStoreReader",
    "OnlineStoreWriter", "RedisSettings", "WriteResult", "decode_timestamp", "decode_value", "encode_bigint",
    "encode_bigints", "encode_doubles", "encode_timestamp", "entity_key_prefix", "feature_field", "redis_client",
    "redis_key", "timestamp_field", "write_dataframe_online",
]
