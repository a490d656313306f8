"""Topics on the broker: the names the worker needs, creating the missing ones (waiting out a
broker that is not up yet), and the partitions of the clickstream topics."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.admin import NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError

from streams.core.input.repartition import source_name
from streams.errors import KafkaUnavailable
from streams.kafka.clients import new_admin
from streams.settings import Settings

log = logging.getLogger(__name__)


def changelog_topic(settings: Settings, table: str) -> str:
    return f"{settings.app_id}-{table}-changelog"


def required_topics(settings: Settings) -> dict[str, int]:
    """Every topic the worker reads or writes, with its partition count."""
    n = settings.partitions
    names = [
        *map(settings.topic, settings.topic_clickstream),
        settings.topic(settings.topic_events),
        *settings.output_topics.values(),
        changelog_topic(settings, "journeys"),
        settings.topic(settings.topic_erased),
        settings.topic(settings.topic_erasures),
    ]
    return dict.fromkeys(names, n)


def compacted_topics(settings: Settings) -> frozenset[str]:
    """Topics that keep the latest record per key (`cleanup.policy=compact`)."""
    return frozenset({settings.topic(settings.topic_erased)})


async def ensure_topics(settings: Settings, wait_s: float = 300.0) -> list[str]:
    """Create the missing topics; retry with a log line while the broker is unreachable."""
    wanted = required_topics(settings)
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        admin = new_admin(settings)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            if missing:
                compacted = compacted_topics(settings)
                await admin.create_topics(
                    [
                        NewTopic(
                            name,
                            wanted[name],
                            settings.replication_factor,
                            topic_configs={"cleanup.policy": "compact"} if name in compacted else None,
                        )
                        for name in missing
                    ]
                )
                log.info("created topics: %s", ", ".join(missing))
            return missing
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(
                    f"Kafka at {settings.kafka_bootstrap_servers} unreachable for {wait_s:.0f} s: {exc}"
                ) from exc
            log.warning(
                "Kafka at %s not reachable yet (%s); retrying in %.1f s",
                settings.kafka_bootstrap_servers,
                exc.__class__.__name__,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
        finally:
            await admin.close()


async def source_partitions(settings: Settings) -> list[str]:
    """Every partition of the clickstream topics, as source names ("topic/partition")."""
    topics = [settings.topic(t) for t in settings.topic_clickstream]
    admin = new_admin(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    sources = []
    for topic in described:
        if topic["error_code"] or not topic["partitions"]:
            raise KafkaUnavailable(f"clickstream topic {topic['topic']!r} does not exist on the broker")
        sources += [source_name(topic["topic"], p["partition"]) for p in topic["partitions"]]
    return sorted(sources)
