"""The demo's traffic as Segment messages (`conversions demo --via collector`): the same
simulated shop, sent as a Segment tracker would send it, must give exactly the outputs our own
JSON gives. Both run through offline mode, which is the engine the worker runs; the Segment side
is read by the same auto-detection the worker applies to a clickstream topic."""

from __future__ import annotations

from typing import Any

import orjson

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.input.decode import decode_message
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.collector_traffic import segment_message
from streams.tools.simulate import Simulator


def outputs(lines: list[bytes]) -> list[dict[str, Any]]:
    run = OfflineRun(compile_config(load_config(DEFAULT_FUNNELS)), partitions=4)
    return [orjson.loads(o.to_json()) for o in [*run.run(lines), *run.flush()]]


def test_a_simulated_event_maps_to_the_segment_call_a_tracker_sends() -> None:
    events = Simulator(seed=5, users=300, days=1).events()
    by_kind = {("page" if e["event"] == "page_view" else "track"): e for e in events}
    page, track = segment_message(by_kind["page"]), segment_message(by_kind["track"])
    assert page["type"] == "page" and "event" not in page
    assert page["properties"]["url"] == by_kind["page"]["page"]["url"]
    assert track["type"] == "track" and track["event"] == by_kind["track"]["event"]
    for message, event in ((page, by_kind["page"]), (track, by_kind["track"])):
        assert message["messageId"] == event["event_id"] and message["timestamp"] == event["timestamp"]
        assert message["anonymousId"] == event["anonymous_id"]
        assert message.get("userId") == event.get("user_id")
        assert message["context"]["page"]["url"] == event["page"]["url"]
        assert "sentAt" not in message  # the simulated clock is not to be corrected to real time
    platforms = {e["context"]["platform"]: segment_message(e) for e in events}
    assert set(platforms) == {"web", "mobile", "ios", "android"}
    for platform, message in platforms.items():
        (decoded,) = decode_message(orjson.dumps(message), format="segment").events
        assert decoded.context["platform"] == platform


def test_the_same_shop_through_segment_messages_gives_the_same_outputs() -> None:
    events = Simulator(seed=11, users=400, days=2).events()
    assert {"login", "purchase", "page_view"} <= {e["event"] for e in events}
    assert any(e.get("user_id") and e.get("anonymous_id") for e in events)  # sign-ins: links
    ours = outputs([orjson.dumps(e) for e in events])
    theirs = outputs([orjson.dumps(segment_message(e)) for e in events])
    kinds = {o["type"] for o in ours}
    assert {"micro", "macro", "dropoff", "session", "identity"} <= kinds
    assert len(ours) > 1_000
    assert theirs == ours
