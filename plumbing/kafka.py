"""Kafka from Python: the event topics, an admin client and the producer of live events.

Live events travel as one topic per event type, ``<events.kafka_topic_prefix><event type>``
(``transactions``, ``activity``, ``chargebacks``); a record's value is the event's JSON
line (UTF-8, the same bytes as a line of a landing file, newline left out) and its key
the entity the event belongs to (``schemas.EVENT_ENTITY_COLUMNS``: the user for
transactions and activity, the merchant for chargebacks), so one entity's events stay
in order on one partition. The streaming job reads them with Spark's Kafka connector;
this module is for the rest: ``tessera up`` (topics), the event generator (producer),
the tests.

The client is confluent-kafka (librdkafka). Its own log goes to a silent Python logger:
connection errors show as exceptions where they matter, not as lines on stderr while a
broker starts or stops.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from plumbing.config import Config
from transformations.schemas import EVENT_TYPES

_QUIET = logging.getLogger("tessera.kafka.client")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class KafkaError(RuntimeError):
    """A Kafka call failed (broker unreachable, a record not delivered); the message says why."""


@dataclass(frozen=True)
class KafkaTopics:
    """Where live events go: the brokers, the topic names, the partitions of a new topic."""

    bootstrap_servers: str
    prefix: str = ""
    partitions: int = 4

    @classmethod
    def of(cls, cfg: Config) -> KafkaTopics:
        return cls(cfg.kafka_bootstrap_servers(), cfg.events.kafka_topic_prefix, cfg.services.kafka.partitions)

    def topic(self, event_type: str) -> str:
        return self.prefix + event_type

    @property
    def names(self) -> list[str]:
        return [self.topic(event_type) for event_type in EVENT_TYPES]

    def __str__(self) -> str:
        return f"kafka {self.bootstrap_servers} topics {', '.join(self.names)}"


def admin_client(bootstrap_servers: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap_servers, "socket.connection.setup.timeout.ms": 2000},
                       logger=_QUIET)


def broker_ids(bootstrap_servers: str, timeout_s: float = 2.0) -> list[int]:
    """The brokers the cluster's metadata lists (raises when none answers in time)."""
    metadata = admin_client(bootstrap_servers).list_topics(timeout=timeout_s)
    return sorted(metadata.brokers)


def ensure_topics(topics: KafkaTopics, timeout_s: float = 30.0) -> list[str]:
    """Create the event topics that do not exist yet (partitions ``topics.partitions``,
    the cluster's default replication); returns the names created. Idempotent."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic

    admin = admin_client(topics.bootstrap_servers)
    try:
        existing = set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        raise KafkaError(f"cannot reach Kafka at {topics.bootstrap_servers}: {exc}") from None
    missing = [name for name in topics.names if name not in existing]
    if not missing:
        return []
    futures = admin.create_topics([NewTopic(name, num_partitions=topics.partitions, replication_factor=-1)
                                   for name in missing], operation_timeout=timeout_s, request_timeout=timeout_s)
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":  # another `up` got there first
                raise KafkaError(f"cannot create topic {name} on {topics.bootstrap_servers}: {exc}") from None
    return created


def delete_topics(bootstrap_servers: str, names: Iterable[str], timeout_s: float = 30.0) -> None:
    """Delete topics (the tests' own); a missing one is fine."""
    from confluent_kafka import KafkaException

    futures = admin_client(bootstrap_servers).delete_topics(list(names), operation_timeout=timeout_s)
    for future in futures.values():
        try:
            future.result()
        except KafkaException as exc:
            if exc.args[0].name() != "UNKNOWN_TOPIC_OR_PART":
                raise


class EventProducer:
    """Produces JSON lines to the event topics; :meth:`flush` waits until every record is
    acknowledged by the broker (``acks=all``, idempotent: a retried send is stored once)."""

    def __init__(self, topics: KafkaTopics, delivery_timeout_s: float = 120.0):
        from confluent_kafka import Producer

        self.topics = topics
        self.sent = 0
        self._errors: list[str] = []
        self._producer = Producer({
            "bootstrap.servers": topics.bootstrap_servers,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 5,
            "delivery.timeout.ms": int(delivery_timeout_s * 1000),
        }, logger=_QUIET)

    def _delivered(self, error, message) -> None:
        if error is not None and len(self._errors) < 10:
            self._errors.append(f"{message.topic()}: {error}")

    def send(self, event_type: str, values: Sequence[bytes], keys: Sequence[bytes | None] | None = None) -> None:
        """Queue one record per value (keys beside them, or none)."""
        topic = self.topics.topic(event_type)
        keys = keys if keys is not None else [None] * len(values)
        produce, poll = self._producer.produce, self._producer.poll
        for value, key in zip(values, keys, strict=True):
            while True:
                try:
                    produce(topic, value, key, on_delivery=self._delivered)
                    break
                except BufferError:  # the local queue is full: let deliveries drain it
                    poll(0.05)
        poll(0)
        self.sent += len(values)

    def flush(self, timeout_s: float = 120.0) -> None:
        """Wait for every queued record's acknowledgement; raise if any was not delivered."""
        left = self._producer.flush(timeout_s)
        if self._errors or left:
            errors, self._errors = self._errors, []
            raise KafkaError(f"{left} record(s) not acknowledged by {self.topics.bootstrap_servers} within "
                             f"{timeout_s:.0f}s; delivery errors: {errors or 'none'}")
