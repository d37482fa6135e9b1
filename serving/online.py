"""The API's online reads: the reader's plan and decoding around an asyncio Redis client.

A blocking client in a worker thread cost ~0.2 ms of CPU per request in thread hand-offs
alone; redis.asyncio on the event loop much less, and it can be cancelled: a read past
``serving.request_timeout_s`` is abandoned (its connection closed) and answered 504,
while other requests go on. The commands go out as the reader packs them (a view's
fields encoded once per plan): redis-py's pipeline spent ~20 us a command packing
the same 20-odd fields again.

On Redis Cluster (``redis.mode: cluster``) the client is redis.asyncio's RedisCluster,
used for its slot map and its per-node connections: a request's commands are grouped
by the node of each key's slot and sent to all those nodes at once, one round trip per
node. A node that answers MOVED/ASK (a slot moved), TRYAGAIN, CLUSTERDOWN or drops the
connection gets the slot map refreshed and the request retried once; then 503.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import anyio
import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterDownError, MovedError, RedisClusterException, TryAgainError

from plumbing.online_store import OnlineStoreReader, RedisSettings
from serving import metrics
from serving.dependencies import RequestTimeout

Rows = list[list[OnlineStoreReader.Row]]  # per entity, one row per view of the plan


def async_redis_client(settings: RedisSettings) -> redis.asyncio.Redis | RedisCluster:
    """A client with its own pool, for the running event loop (the same settings as
    ``plumbing.online_store.redis_client``); a RedisCluster in cluster mode."""
    # No socket timeout: every read runs under the request's own budget (read_rows), and
    # redis-py's per-reply timer cost more than the reply's parsing. No retries inside
    # redis-py: its default backs off for seconds when Redis is down, where the API must
    # answer 503 at once; _round_trip retries a stale connection itself, once.
    if settings.cluster:
        return _ApiClusterClient(startup_nodes=[ClusterNode(host, port) for host, port in settings.nodes],
                                 **settings.client_options(), socket_connect_timeout=5, socket_timeout=None,
                                 health_check_interval=30, retry=Retry(NoBackoff(), 1))
    return redis.asyncio.Redis(**settings.client_options(), socket_connect_timeout=5, socket_timeout=None,
                               health_check_interval=30, retry=Retry(NoBackoff(), 0))


class _ApiClusterClient(RedisCluster):
    """redis.asyncio's RedisCluster, but no node reachable is a redis.RedisError (as with
    one Redis): redis-py raises a RedisClusterException, which the API's handlers (503,
    /readyz's check) would not take for Redis being down."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as error:
            raise ClusterDownError(f"no node of the Redis Cluster answered: {error}") from error


async def read_rows(client: redis.asyncio.Redis | RedisCluster, reader: OnlineStoreReader,
                    plan: OnlineStoreReader.Plan, entity_rows: Sequence[Mapping[str, str]], now: datetime,
                    timeout_s: float) -> Rows:
    """Every view's row of every entity, in one pipelined round trip (per node, on a
    cluster); RequestTimeout past ``timeout_s``, redis.RedisError when Redis fails."""
    count = len(entity_rows) * len(plan.views)
    started = time.perf_counter()
    with anyio.move_on_after(timeout_s):
        if isinstance(client, RedisCluster):
            replies = await _cluster_round_trips(client, reader.keyed_commands(plan, entity_rows))
        else:
            replies = await _round_trip(client.connection_pool, reader.packed_commands(plan, entity_rows), count)
        metrics.ONLINE_READ.observe(time.perf_counter() - started)
        return reader.decode(plan, replies, now, len(entity_rows))
    raise RequestTimeout()  # only reached when the budget ran out


_SLOT_MOVED = (MovedError, AskError, TryAgainError, ClusterDownError, redis.ConnectionError, redis.TimeoutError)


async def _cluster_round_trips(client: RedisCluster, keyed: list[tuple[bytes, bytes]]) -> list:
    """The replies of ``keyed`` commands ((key, packed command)), in order: each node
    gets its commands in one pipelined round trip, all nodes at once."""
    for attempt in (1, 2):
        try:
            if attempt == 1:
                await client.initialize()  # the slot map, on first use (then a flag check)
            else:
                await client.nodes_manager.initialize()  # the slot map again, for the second try
        except RedisClusterException as error:  # no seed node answered: a RedisError, so a 503
            raise ClusterDownError(f"no node of the Redis Cluster answered: {error}") from error
        slots = client.nodes_manager.slots_cache
        by_node: dict[str, tuple[ClusterNode, list[int], list[bytes]]] = {}
        try:
            for number, (key, packed) in enumerate(keyed):
                node = slots[key_slot(key)][0]  # the slot's master
                group = by_node.get(node.name)
                if group is None:
                    group = by_node[node.name] = (node, [], [])
                group[1].append(number)
                group[2].append(packed)
        except (KeyError, IndexError):  # a slot no node holds (yet)
            failures: list[BaseException] = [ClusterDownError("a slot of the request is not covered")]
        else:
            replies: list = [None] * len(keyed)
            # gather: cancelled with the request (each node's connection then closed).
            outcomes = await asyncio.gather(*(_node_round_trip(node, numbers, commands, replies)
                                              for node, numbers, commands in by_node.values()),
                                            return_exceptions=True)
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if not failures:
                return replies
        if attempt == 2 or not all(isinstance(failure, _SLOT_MOVED) for failure in failures):
            raise failures[0]
    raise AssertionError("unreachable")


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


async def _node_round_trip(node: ClusterNode, numbers: list[int], commands: list[bytes], replies: list) -> None:
    """One node's share of a request: its commands in one write, its replies into ``replies``."""
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(b"".join(commands))
        for number in numbers:
            replies[number] = await connection.read_response()
    except BaseException:  # unread replies may be left: never reuse the connection as is
        await _close(connection)
        raise
    finally:
        node.release(connection)


async def _close(connection) -> None:
    with anyio.CancelScope(shield=True):  # even inside a cancelled (timed-out) request
        await connection.disconnect(nowait=True)
