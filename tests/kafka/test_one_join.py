"""Ingest's consumer lists two protocols (`kafka.assignors`) and joins its group with one
JoinGroup carrying both (`kafka.one_join`), where aiokafka 0.14 sends one per protocol: the first
with ours alone, which a group of earlier versions' members (round robin alone) cannot take, and
a second rebalance for the second. Through the real broker: the requests that reach it counted."""

from __future__ import annotations

from typing import Any

from aiokafka.protocol.group import JoinGroupRequest

from streams.kafka import ensure_topics
from streams.settings import Settings
from tests.kafka.test_ingest_assignment import ALL, settle
from tests.kafka.test_read_committed import ingest_consumer


async def test_ingest_joins_its_group_with_one_join_group_listing_both_protocols(settings: Settings) -> None:
    await ensure_topics(settings)
    consumer = ingest_consumer(settings)
    await consumer.start()
    client = consumer._client
    sent: list[tuple[list[str], int]] = []
    send = client.send

    async def counted(node_id: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = await send(node_id, request, *args, **kwargs)
        if isinstance(request, JoinGroupRequest):
            sent.append(([name for name, _ in request._group_protocols], response.error_code))
        return response

    client.send = counted
    consumer.subscribe([settings.topic(t) for t in settings.topic_clickstream])
    try:
        assert await settle(consumer, until=lambda owned: owned == [ALL]) == [ALL]
    finally:
        await consumer.stop()
    joined = [protocols for protocols, error in sent if error == 0]
    assert joined == [["conversions-ingest", "roundrobin"]], sent
    assert all(protocols == joined[0] for protocols, _ in sent), "every JoinGroup lists both"
