"""The Faust baselines the pipeline is measured against, each run as its own worker process:

    python -m bench.contenders bare|naive TOPIC EXPECTED_EVENTS

`bare` is a bare Faust `take()` loop that only counts; `naive` is the design one writes first:
decode and validate each event, then one Redis call per event. Both print one JSON line,
{"events": n, "seconds": s}, the time from the first message (for `bare`, the first batch) to
the last, and exit.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import faust
import orjson
import redis.asyncio as aioredis

from streams.core.input.decode import decode_message


def main(kind: str, topic_name: str, expected: int) -> None:
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    app = faust.App(
        f"bench-{kind}-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=os.environ.get("CONVERSIONS_DATA_DIR", "var/bench"),
        web_enabled=False,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=3,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    state = {"events": 0, "first": 0.0, "uncounted": 0}

    def done() -> None:
        seconds = time.perf_counter() - state["first"]
        events = state["events"] - state["uncounted"]
        print(orjson.dumps({"events": events, "seconds": seconds}).decode(), flush=True)
        os._exit(0)  # the measurement is over; a clean Faust shutdown would only add noise

    if kind == "bare":

        @app.agent(topic)
        async def bare(stream: faust.StreamT[bytes]) -> None:
            async for values in stream.take(100, within=0.2):
                for value in values:
                    # a batch message counts its events; a bare loop looks no further
                    state["events"] += value.count(b'"event_id"') if value[:1] == b"[" else 1
                if not state["first"]:
                    # the clock starts when the first batch is in hand, so that batch's
                    # events are not counted: otherwise a run of a few batches has no duration
                    state["first"], state["uncounted"] = time.perf_counter(), state["events"]
                if state["events"] >= expected:
                    done()

    else:
        redis = aioredis.from_url(os.environ["REDIS_URL"])

        @app.agent(topic)
        async def naive(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                state["first"] = state["first"] or time.perf_counter()
                for event in decode_message(value).events:
                    await redis.hincrby(f"naive:{event.event}", "count", 1)
                    state["events"] += 1
                if state["events"] >= expected:
                    done()

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
