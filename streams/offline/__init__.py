"""Offline mode: the engine over files, with no Kafka, in event time (`run`), and on several
processes at once, each owning a share of the identities (`parallel`)."""
