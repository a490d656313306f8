"""Erasure in the pure core: `Engine.forget` removes a person's journey, held items and the link
stubs of their anonymous ids (the store's deletes are the changelog's tombstones on Kafka), and
the enricher's erased ids screen the person's events stamped before the erasure, so a replay of
their old raw events does not bring them back while later events start a new journey.

The Kafka path (`conversions forget`, the compacted topic, a restart) is
tests/pipeline/test_erasure.py."""

from __future__ import annotations

import orjson

from streams.core.input.audience import EnrichmentSpec
from streams.offline.run import OfflineRun
from tests.core.journeys.test_identity import SEVEN, config, event, of_type


def test_forget_removes_the_journey_and_its_link_stubs_and_replays_do_not_bring_them_back() -> None:
    run = OfflineRun(config(), 4)
    for body in SEVEN:
        run.feed(orjson.dumps(body))
    run.engine.flush()  # the journeys written, their sessions still open
    assert {"user-1", "anon-1"} <= set(run.store)
    deleted = run.engine.forget("anon-1")  # asked by the device's id: the person it is linked to
    run.engine.flush()
    assert sorted(deleted) == ["anon-1", "user-1"]
    assert "user-1" not in run.store and "anon-1" not in run.store
    assert run.engine.forget("user-1") == []  # nothing left to erase

    erased_at = 1_710_324_000_000 + 20 * 60_000  # 10:20, after the seven events
    later = OfflineRun(config(), 4, store=run.store, enrichment=EnrichmentSpec(bots="include"))
    assert later.enricher is not None
    later.enricher.erased = {"user-1": erased_at, "anon-1": erased_at}
    replayed = [o for body in SEVEN for o in later.feed(orjson.dumps(body))]
    assert replayed == [] and later.screened == {"erased": len(SEVEN)}
    assert "user-1" not in later.store and "anon-1" not in later.store
    # after the erasure the same ids start a new journey
    fresh = later.feed(orjson.dumps(event("purchase", 30, user_id="user-1", properties={"value": 5.0})))
    fresh += later.flush()
    (macro,) = of_type(fresh, "macro")
    assert macro["sessions"] == 1 and macro["micro_path"] == [] and macro["landing_page"] is None
