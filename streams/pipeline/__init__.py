"""The Faust side: Kafka message -> ingest -> journeys -> output topics.

`app` builds the Faust app (topics, the journeys table, the two agents, publishing); `ingest`
and `journeys` are the agents; `durable_table` and `stores/` keep the journeys; `transport`
patches Faust's consumer; `services` runs other rooms' tasks beside the agents. Nothing here
imports counters, alerts or web: they see the pipeline through `streams.ports`.
"""
