"""Link notices: what lets a held event go as soon as the partitions it could conflict with
have passed it, rather than every partition.

A person's held event can only be overtaken by an item still on its way from a partition that
sends items for that person: the homes of the anonymous ids linked to them (known from their
journey) and of any anonymous id that an event carrying both ids is about to link, forward or
refuse there. The journey knows the first kind; nothing on the person's partition knew the second
until its item arrived. So ingest, besides sending such an event to its home, sends the person's
partition a *notice* (the user, the anonymous id, the event time) in the same batch as that
source's other events for it: once the partition's own sources have passed t, it has seen the
notice of every such event before t, and knows every partition an earlier item can still come
from.

A notice is an item of an ingest batch that is not an event (no event id): `{"notice": user,
"anon": anonymous id, "ts": ms}`. It changes nothing by itself and is not stored: after a restart
or a rebalance the partition falls back to waiting for every partition until their watermarks
pass what its sources had reached (`Engine.notices_lost_until`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NOTICE_KEY = "notice"


@dataclass(frozen=True, slots=True)
class Notice:
    """An event at `ts` carrying both `user` and `anonymous_id` went to the anonymous id's home."""

    user: str
    anonymous_id: str
    ts: int

    def encode(self) -> dict[str, Any]:
        return {NOTICE_KEY: self.user, "anon": self.anonymous_id, "ts": self.ts}


def is_notice(body: Any) -> bool:
    return isinstance(body, dict) and NOTICE_KEY in body and "event_id" not in body


def decode_notice(body: Any) -> Notice:
    """A notice as `encode` wrote it."""
    if not isinstance(body, dict):
        raise ValueError("a link notice must be an object")
    user, anonymous_id, ts = body.get(NOTICE_KEY), body.get("anon"), body.get("ts")
    if not isinstance(user, str) or not isinstance(anonymous_id, str) or not isinstance(ts, int):
        raise ValueError("a link notice needs a user id, an anonymous id and a time")
    return Notice(user, anonymous_id, ts)
