"""What a generation is made of, from the base settings: its application id (consumer groups,
journeys changelog, counter keys) and its own internal and output topics.

A generation N >= 1 writes every output to topics of its own, `<app_id>-g<N>.<topic>` (after
`CONVERSIONS_TOPIC_PREFIX`), never to the live topics services read: a replay of days of history
cannot flood a downstream consumer (docs/howto/deploy-with-history.md says why this and not
holding outputs back). Generation 0 is the plain worker's: the base id and the live topics.
The clickstream topics are the same for every generation.
"""

from __future__ import annotations

from pathlib import Path

from streams.generations.registry import generation_app_id
from streams.settings import Settings

GENERATION_TOPICS = (
    "topic_events",
    "topic_micro",
    "topic_macro",
    "topic_dropoffs",
    "topic_alerts",
    "topic_sessions",
    "topic_identities",
    "topic_experiments",
    "topic_deadletter",
)


def generation_settings(base: Settings, number: int, funnels: Path | None = None) -> Settings:
    """The settings a worker of generation `number` runs with (base: the settings of generation
    0, whatever `CONVERSIONS_GENERATION` says)."""
    base_id = base_app_id(base)
    update: dict[str, object] = {"app_id": generation_app_id(base_id, number), "generation": number}
    if number > 0:
        prefix = f"{generation_app_id(base_id, number)}."
        update.update({name: prefix + getattr(base, name) for name in GENERATION_TOPICS})
    if funnels is not None:
        update["funnels"] = funnels
    return base.model_copy(update=update)


def base_app_id(settings: Settings) -> str:
    """The application id that names the registry: the configured one (a generation's settings
    carry their own, `<base>-g<N>`)."""
    number = settings.generation or 0
    suffix = f"-g{number}"
    if number and settings.app_id.endswith(suffix):
        return settings.app_id.removesuffix(suffix)
    return settings.app_id


def ingest_group(settings: Settings) -> str:
    """The consumer group of a worker's clickstream ingest (`pipeline.ingest_consumer`)."""
    return f"{settings.app_id}-ingest"


def consumer_groups(settings: Settings) -> list[str]:
    """The consumer groups a generation's workers commit in: Faust's (the application id), the
    ingest's and the counters' (unless `CONVERSIONS_COUNTERS_GROUP` names one shared by all)."""
    own = [settings.app_id, ingest_group(settings)]
    return own if settings.counters_group else [*own, f"{settings.app_id}-counters"]
