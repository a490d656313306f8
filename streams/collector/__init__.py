"""A Segment-compatible HTTP collector in front of the clickstream topic.

Segment's, RudderStack's and Jitsu's tracking libraries post to Segment's HTTP tracking API;
pointed at this collector instead (their `host` / `apiHost` option), they feed the engine with
no Segment account and no translator in between. It takes `POST /v1/batch` (and `/v1/import`,
and analytics.js's `/v1/b`) and the single calls `/v1/track`, `/v1/page`, `/v1/screen`,
`/v1/identify`, `/v1/alias`, `/v1/group` (and analytics.js's `/v1/t`, `/v1/p`, ...), checks
them with the same Segment mapping the worker decodes them with (streams/core/input/formats), and
produces each message, as a Segment message stamped with `receivedAt`, to the clickstream topic,
keyed by its anonymous id, else its user id (the id identity stitching decides it on). It
answers 200 only once the broker has acknowledged every message of the request, so nothing it
acknowledged can be lost; a client retries anything else (the engine applies a retried
`messageId` once).

`messages` is the pure part (one request's body to the records to produce, or the refusal),
`server` the aiohttp server and the producer. A worker runs it beside its agents when
`CONVERSIONS_COLLECTOR_ENABLED` is set (`from_settings`, streams/worker.py).
"""

from streams.collector.messages import CollectorConfig, Refusal, accept
from streams.collector.server import Collector, collector_config, from_settings, kafka_producer

__all__ = [
    "Collector",
    "CollectorConfig",
    "Refusal",
    "accept",
    "collector_config",
    "from_settings",
    "kafka_producer",
]
