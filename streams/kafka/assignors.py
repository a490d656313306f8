"""The ingest group's partition assignor: every partition to one member, or round robin.

Ingest aligns the event time of the partitions one consumer reads (`pipeline.alignment`); with
the partitions spread over several workers, each aligns only its own, and a person whose
unkeyed events land on two workers' partitions can reach the journey out of order (`late_event`).
Ingest is cheap (about 35 us of CPU per event), so one consumer can read every clickstream
partition while the journeys stay spread over all workers: `one` does that. The others are
assigned nothing and idle; when the reader leaves, the rebalance gives everything to another.

Sticky: each member says in its subscription's user data whether it holds partitions now, and
the leader keeps them there (a worker that joins does not take the reading over); with no
holder, the lowest member id gets them, so every leader picks the same member.

Every member, `one` or `spread`, joins with the same protocol name, its wish in the user data:
the leader gives everything to one member only if every member asks for `one`, else it spreads
the partitions round robin. So members that disagree (a rolling change of
`CONVERSIONS_INGEST_ASSIGNMENT`) form a group, spread, instead of failing to join (a broker
refuses a member whose protocols differ from the group's: InconsistentGroupProtocol, fatal to
an aiokafka consumer). aiokafka's round robin, the protocol of earlier versions, is listed
second: during an upgrade, the new members join the earlier ones' group on it (spread). Tansu
keeps a group's protocol while the group has a member, so the group spreads until every worker
has left it once (all stopped, then started); Kafka selects the protocol again at each rebalance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Literal

from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

log = logging.getLogger(__name__)

Mode = Literal["one", "spread"]
HOLDS = b"+holds"  # appended to the user data of a member that holds partitions now


class IngestAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """An instance per consumer: it carries its consumer's wish (`one` or `spread`) and
    remembers whether its consumer holds partitions."""

    name = "conversions-ingest"
    version = 0

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.holds = False

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        user_data = self.mode.encode() + (HOLDS if self.holds else b"")
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.holds = any(partitions for _, partitions in assignment.assignment)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        if not all(meta.user_data.startswith(b"one") for meta in members.values()):
            log.info("ingest assignment: round robin over %d members (not all ask for one)", len(members))
            spread: dict[str, ConsumerProtocolMemberAssignment] = RoundRobinPartitionAssignor.assign(
                cluster, members
            )
            return spread
        reader = chosen(members)
        by_topic: dict[str, list[int]] = {}
        for topic in sorted(members[reader].subscription):
            partitions = cluster.partitions_for_topic(topic)
            if partitions is None:
                log.warning("no partition metadata for topic %s", topic)
                continue
            by_topic[topic] = sorted(partitions)
        log.info("ingest assignment: every partition to one member of %d", len(members))
        return {
            member: ConsumerProtocolMemberAssignment(
                self.version, sorted(by_topic.items()) if member == reader else [], b""
            )
            for member in members
        }


def chosen(members: Mapping[str, ConsumerProtocolMemberMetadata]) -> str:
    """The member that reads: the lowest id among those that hold partitions now, else the lowest."""
    holders = [m for m, meta in members.items() if meta.user_data.endswith(HOLDS)]
    return min(holders or members)
