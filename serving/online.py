"""The API's online reads: the reader's plan and decoding around an asyncio Redis client.

A blocking client in a worker thread cost ~0.2 ms of CPU per request in thread hand-offs
alone; redis.asyncio on the event loop much less, and it can be cancelled: a read past
``serving.request_timeout_s`` is abandoned (its connection closed) and answered 504,
while other requests go on. The commands go out as the reader packs them (a view's
fields encoded once per plan): redis-py's pipeline spent ~20 us a command packing
the same 20-odd fields again.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime

import anyio
import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from plumbing.online_store import OnlineStoreReader, RedisSettings
from serving import metrics
from serving.dependencies import RequestTimeout

Rows = list[list[OnlineStoreReader.Row]]  # per entity, one row per view of the plan


def async_redis_client(settings: RedisSettings) -> redis.asyncio.Redis:
    """A client with its own pool, for the running event loop (the same settings as
    ``plumbing.online_store.redis_client``)."""
    # No socket timeout: every read runs under the request's own budget (read_rows), and
    # redis-py's per-reply timer cost more than the reply's parsing. No retries inside
    # redis-py: its default backs off for seconds when Redis is down, where the API must
    # answer 503 at once; _round_trip retries a stale connection itself, once.
    return redis.asyncio.Redis(**settings.client_options(), socket_connect_timeout=5, socket_timeout=None,
                               health_check_interval=30, retry=Retry(NoBackoff(), 0))


async def read_rows(client: redis.asyncio.Redis, reader: OnlineStoreReader, plan: OnlineStoreReader.Plan,
                    entity_rows: Sequence[Mapping[str, str]], now: datetime, timeout_s: float) -> Rows:
    """Every view's row of every entity, in one pipelined round trip; RequestTimeout past
    ``timeout_s``, redis.RedisError when Redis fails."""
    packed = reader.packed_commands(plan, entity_rows)
    count = len(entity_rows) * len(plan.views)
    started = time.perf_counter()
    with anyio.move_on_after(timeout_s):
        replies = await _round_trip(client.connection_pool, packed, count)
        metrics.ONLINE_READ.observe(time.perf_counter() - started)
        return reader.decode(plan, replies, now, len(entity_rows))
    raise RequestTimeout()  # only reached when the budget ran out


async def _round_trip(pool: redis.asyncio.ConnectionPool, packed: bytes, count: int) -> list:
    """Send ``packed`` (``count`` commands) on a pooled connection and read the replies.

    A connection that failed or was interrupted may hold unread replies: it is closed,
    never reused as is. A pooled connection found broken (Redis restarted since its last
    use) is retried once on a new one: reads are idempotent, and the first request after
    Redis comes back then succeeds instead of failing on a stale socket."""
    for attempt in (1, 2):
        connection = await pool.get_connection()
        try:
            await connection.send_packed_command(packed)
            return [await connection.read_response() for _ in range(count)]
        except (redis.ConnectionError, redis.TimeoutError):
            await _close(connection)
            if attempt == 2:
                raise
        except BaseException:  # a Redis error reply, or the request's time budget ran out
            await _close(connection)
            raise
        finally:
            await pool.release(connection)
    raise AssertionError("unreachable")


async def _close(connection) -> None:
    with anyio.CancelScope(shield=True):  # even inside a cancelled (timed-out) request
        await connection.disconnect(nowait=True)
