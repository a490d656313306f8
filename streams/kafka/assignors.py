"""A partition assignor that gives every partition to one member of the group.

Ingest aligns the event time of the partitions one consumer reads (`pipeline.alignment`); with
the partitions spread over several workers, each aligns only its own, and a person whose
unkeyed events land on two workers' partitions can reach the journey out of order (`late_event`).
Ingest is cheap (about 35 us of CPU per event), so one consumer can read every clickstream
partition while the journeys stay spread over all workers: this assignor does that for the
ingest group. The others are assigned nothing and idle; when the reader leaves, the rebalance
gives everything to one of the others.

Sticky: each member says in its subscription's user data whether it holds partitions now, and
the leader keeps them there (a worker that joins does not take the reading over); with no
holder, the lowest member id gets them, so every leader picks the same member.

Every member lists this protocol first and aiokafka's round robin second: the group uses the
first protocol that every member supports, so a member still on round robin alone (a rolling
change of `CONVERSIONS_INGEST_ASSIGNMENT`) makes the whole group spread, and nothing fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = logging.getLogger(__name__)

HOLDS = b"holds"  # user data of a member that holds partitions now


class OneMemberAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """All partitions of the subscribed topics to one member; an instance per consumer (it
    remembers whether its consumer holds partitions)."""

    name = "conversions-one"
    version = 0

    def __init__(self) -> None:
        self.holds = False

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), HOLDS if self.holds else b"")

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.holds = any(partitions for _, partitions in assignment.assignment)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        reader = chosen(members)
        by_topic: dict[str, list[int]] = {}
        for topic in sorted({t for m in members.values() for t in m.subscription}):
            partitions = cluster.partitions_for_topic(topic)
            if partitions is None:
                log.warning("no partition metadata for topic %s", topic)
                continue
            if topic in members[reader].subscription:
                by_topic[topic] = sorted(partitions)
        log.info(
            "ingest assignment: %d partitions to one member of %d",
            sum(map(len, by_topic.values())),
            len(members),
        )
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version, sorted(by_topic.items()) if member == reader else [], b""
            )
            for member in members
        }


def chosen(members: Mapping[str, ConsumerProtocolMemberMetadata]) -> str:
    """The member that reads: the lowest id among those that hold partitions now, else the lowest."""
    holders = [m for m, meta in members.items() if meta.user_data == HOLDS]
    return min(holders or members)
