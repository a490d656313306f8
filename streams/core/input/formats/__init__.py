"""Input formats other than our own JSON: Segment-spec messages and Snowplow enriched events.

Trackers do not speak the contract's JSON. Segment's libraries (and RudderStack's and Jitsu's,
which follow the same spec) send `track`/`page`/`identify`/`alias` messages; Snowplow's pipeline
writes one tab-separated enriched event per Kafka message. Each is mapped here onto the same
`ClickEvent`, so everything after decoding (journeys, funnels, attribution) cannot tell how an
event arrived. `decode_message(raw, format=...)` in `input.decode` is the only entry: `detect`
tells the formats apart for "auto", `segment` and `snowplow` do the mapping. The formats import
the event model and the rejections below them, never the dispatch above them.
"""
