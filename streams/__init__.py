"""Conversion Streams: real-time micro- and macroconversions from clickstream events.

One folder per concern, each importing only those below it (checked by import-linter, see
`pyproject.toml`): `core` (the pure domain) and the leaves (`errors`, `settings`, `metrics`,
`logging_setup`, `ports`, `offline`, `schemas`, `progress`, `examples`); `kafka` (every aiokafka
client); the rooms `pipeline` (Faust: ingest, journeys, outputs), `counters` (outputs -> Redis),
`alerts` and `web`, which do not import each other; `worker` (the composition root); `tools`;
`cli`.
"""

from streams.compiled import refuse_stale

__version__ = "0.1.0"

# before any compiled module is imported: an extension built from another source is refused
refuse_stale()
