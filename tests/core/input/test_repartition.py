from __future__ import annotations

import orjson
import pytest

from streams.core.input.repartition import PendingBatch, RepartitionBatch


def test_a_batch_from_several_messages_keeps_each_events_source_offset() -> None:
    pending = PendingBatch()
    pending.add([{"n": 1}, {"n": 2}], offset=7, size=100)
    pending.add([{"n": 3}], offset=9, size=60)
    batch = RepartitionBatch.decode(pending.build("clickstream/0", 1_000).encode())

    assert batch.offset == 9 and pending.size == 160
    assert list(zip(batch.events, batch.event_offsets(), strict=True)) == [
        ({"n": 1}, 7),
        ({"n": 2}, 7),
        ({"n": 3}, 9),
    ]


def test_a_batch_from_one_message_carries_its_offset_once() -> None:
    pending = PendingBatch()
    pending.add([{"n": 1}, {"n": 2}], offset=4, size=10)
    body = orjson.loads(pending.build("clickstream/1", 5).encode())

    assert body["offset"] == 4 and "offsets" not in body
    assert RepartitionBatch.decode(orjson.dumps(body)).event_offsets() == [4, 4]


@pytest.mark.parametrize(
    "offsets",
    [[1], [1, "2"], "12", [1, 2, 3]],
)
def test_offsets_that_do_not_match_the_events_are_refused(offsets: object) -> None:
    raw = orjson.dumps({"source": "s/0", "watermark": 1, "offset": 2, "offsets": offsets, "events": [{}, {}]})
    with pytest.raises(ValueError, match="one integer per event"):
        RepartitionBatch.decode(raw)
