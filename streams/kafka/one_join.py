"""One JoinGroup per group join, however many assignors a consumer lists.

aiokafka 0.14 sends its JoinGroup from inside its loop over the consumer's assignors
(`CoordinatorGroupRebalance.perform_group_join`; aio-libs/aiokafka#1168, open): a consumer with
two protocols, as ingest's (`kafka.assignors`: ours, then round robin for earlier versions),
joins with the first protocol alone, then again with both, two rebalances for one join. Tansu
answers a join only at the rebalance timeout, so ingest got its partitions two timeouts after it
subscribed (6 s locally), 1.5 s after the worker's ready line: what was produced meanwhile
waited that long, and at the bench's rate those events were the p99 (bench/README.md, "Issue 30,
the latency tail"). On Kafka the second join is a second rebalance of the whole group, and the
first, without round robin, is refused by a group of earlier versions' members.

`send_one_join` makes a started consumer's first JoinGroup of each join carry every protocol and
answers the loop's later JoinGroups of that join with its response, without sending them."""

from __future__ import annotations

from typing import Any

from aiokafka.protocol.group import JoinGroupRequest


def send_one_join(consumer: Any) -> None:
    """After `consumer.start()`: one JoinGroup per join (nothing to do with one assignor or no
    group)."""
    coordinator = consumer._coordinator
    assignors = tuple(getattr(coordinator, "_assignors", ()))
    if len(assignors) < 2:
        return
    send = coordinator._send_req
    answered: list[Any] = []  # the join's response, for the loop's next JoinGroup

    async def send_req(request: Any) -> Any:
        if not isinstance(request, JoinGroupRequest):
            return await send(request)
        listed = len(request._group_protocols)
        if answered and 1 < listed <= len(assignors):  # the loop's later JoinGroups of this join
            response = answered[0]
            if listed == len(assignors):
                answered.clear()
            return response
        answered.clear()
        response = await send(_with_every_protocol(request, assignors, coordinator))
        if response.error_code == 0 and len(request._group_protocols) < len(assignors):
            answered.append(response)
        return response

    coordinator._send_req = send_req


def _with_every_protocol(request: JoinGroupRequest, assignors: tuple[Any, ...], coordinator: Any) -> Any:
    """The request with every assignor's protocol, in the consumer's order, as aiokafka builds
    them (each assignor's metadata for the subscribed topics)."""
    if len(request._group_protocols) == len(assignors):
        return request
    topics = coordinator._subscription.subscription.topics
    protocols = []
    for assignor in assignors:
        metadata = assignor.metadata(topics)
        protocols.append((assignor.name, metadata if isinstance(metadata, bytes) else metadata.encode()))
    return JoinGroupRequest(
        request._group,
        request._session_timeout,
        request._rebalance_timeout,
        request._member_id,
        request._group_instance_id,
        request._protocol_type,
        protocols,
    )
