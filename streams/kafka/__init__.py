"""Kafka plumbing: the one place that builds aiokafka consumers, producers and admin clients.

Everything here speaks plain aiokafka; Faust's own clients are configured in `pipeline`.
"""

from streams.kafka.clients import consumer_options, kafka_client_options
from streams.kafka.topics import changelog_topic, ensure_topics, required_topics, source_partitions

__all__ = [
    "changelog_topic",
    "consumer_options",
    "ensure_topics",
    "kafka_client_options",
    "required_topics",
    "source_partitions",
]
