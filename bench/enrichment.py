"""Audience enrichment's cost (`python -m bench.enrichment`; `make bench` runs it too).

- **cost per event**: the simulated shop's lines (with user agents, addresses and locales,
  `Simulator(audience=True)`) decoded as ingest decodes them, without and with the enricher
  (`input.audience`: ua-parser, the country lookup, the IP mode, the screens), best of three;
  the difference per event is what enrichment costs. Also the cost of a first sight of a user
  agent (ua-parser with its native matcher, no cache) and of one address lookup.
- **counters' memory per day**: the outputs of one simulated day counted without and with
  audiences (the same traffic, enrichment off and on), the counters' increments applied to a
  real redis-server (`used_memory` before and after), with the default breakdown cap.

Writes bench/results/enrichment.json.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import redis

from streams.core.config.loader import load_config
from streams.core.config.matching import compile_config
from streams.core.input.audience import EnrichmentSpec
from streams.core.input.decode import decode_message
from streams.core.input.geo import GeoLookup
from streams.core.input.useragent import _classify
from streams.core.measures.cardinality import ValueCap
from streams.core.measures.counters import increments
from streams.offline.run import OfflineRun
from streams.settings import DEFAULT_FUNNELS
from streams.tools.infra import start_redis
from streams.tools.simulate import Simulator

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
USERS, DAYS, SEED = 4_000, 1.0, 7


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def lines(audience: bool, users: int = USERS, days: float = DAYS) -> list[bytes]:
    return list(Simulator(seed=SEED, users=users, days=days, audience=audience, bot_share=0.02).lines())


def decode_cost(raw: list[bytes]) -> dict[str, Any]:
    events = sum(len(decode_message(line).events) for line in raw)
    best: dict[str, float] = {}
    for label in ("without", "with"):
        for _ in range(3):
            enricher = EnrichmentSpec().build() if label == "with" else None
            started = time.process_time()
            for line in raw:
                decode_message(line, enricher=enricher)
            spent = time.process_time() - started
            best[label] = min(best.get(label, spent), spent)
    per_event = {label: round(seconds / events * 1e6, 2) for label, seconds in best.items()}
    return {
        "events": events,
        "us_per_event": per_event,
        "enrichment_us_per_event": round(per_event["with"] - per_event["without"], 2),
    }


def first_sight_cost() -> dict[str, float]:
    agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        f"Chrome/{n}.0.{n}.0 Safari/537.36"
        for n in range(2_000)
    ]
    _classify.cache_clear()
    started = time.perf_counter()
    for agent in agents:
        _classify(agent, None, None)
    ua_us = (time.perf_counter() - started) / len(agents) * 1e6
    rng = random.Random(1)
    addresses = [
        ".".join(str(rng.randint(1, 223 if i == 0 else 255)) for i in range(4)) for _ in range(20_000)
    ]
    geo = GeoLookup()
    started = time.perf_counter()
    for address in addresses:
        geo.lookup(address)
    ip_us = (time.perf_counter() - started) / len(addresses) * 1e6
    return {"new_user_agent_us": round(ua_us, 1), "new_address_us": round(ip_us, 2)}


def counter_memory(raw_plain: list[bytes], raw_audience: list[bytes], workdir: Path) -> dict[str, Any]:
    config = compile_config(load_config(DEFAULT_FUNNELS))
    server = start_redis(workdir)
    try:
        client = redis.Redis.from_url(server.url)
        out: dict[str, Any] = {}
        for label, raw, enrichment in (
            ("without_audience", raw_plain, None),
            ("with_audience", raw_audience, EnrichmentSpec()),
        ):
            client.flushall()
            before = int(client.info("memory")["used_memory"])
            run = OfflineRun(config, 4, enrichment=enrichment)
            outputs = [o.model_dump(mode="json") for line in raw for o in run.feed(line)]
            outputs += [o.model_dump(mode="json") for o in run.flush()]
            cap = ValueCap(100)
            pipe = client.pipeline(transaction=False)
            fields = 0
            for output in outputs:
                for op in increments(orjson.loads(orjson.dumps(output)), config, 60_000, cap=cap):
                    if op.kind == "h":
                        pipe.hincrby(op.key, op.field, int(op.amount))
                    elif op.kind == "f":
                        pipe.hincrbyfloat(op.key, op.field, float(op.amount))
                    elif op.kind == "p":
                        pipe.pfadd(op.key, str(op.field))
                    fields += 1
                if len(pipe) > 5_000:
                    pipe.execute()
            pipe.execute()
            used = int(client.info("memory")["used_memory"]) - before
            hash_fields = sum(
                int(client.hlen(k)) for k in client.scan_iter(count=1000) if client.type(k) == b"hash"
            )
            out[label] = {
                "outputs": len(outputs),
                "increments": fields,
                "hash_fields": hash_fields,
                "redis_used_bytes": used,
                "screened": run.screened,
            }
        out["ratio"] = round(
            out["with_audience"]["redis_used_bytes"] / out["without_audience"]["redis_used_bytes"], 2
        )
        return out
    finally:
        server.stop()


def measure() -> dict[str, Any]:
    say(f"simulating {USERS} people over {DAYS:g} day, with and without audiences")
    plain, audience = lines(False), lines(True)
    say("decoding without and with enrichment")
    result: dict[str, Any] = {"decode": decode_cost(audience), "first_sight": first_sight_cost()}
    with tempfile.TemporaryDirectory() as workdir:
        say("counting a day into redis-server, without and with audiences")
        result["counters_per_day"] = counter_memory(plain, audience, Path(workdir))
    result["traffic"] = {"users": USERS, "days": DAYS, "seed": SEED, "bot_share": 0.02}
    return result


def main() -> None:
    result = measure()
    RESULTS.mkdir(exist_ok=True)
    text = json.dumps(result, indent=2)
    (RESULTS / "enrichment.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
