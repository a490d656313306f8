"""The pure core: a deterministic function of its inputs, in event time.

Nothing under this package imports Faust, aiokafka or Redis, and nothing reads a clock. It is
five rooms, each importing only the rooms below it (import-linter keeps the order):

- `measures`: what is computed over the outputs: counters as plain data, the analyses the API
  serves, alert rules and their statistics, live experiments;
- `journeys`: one person's journey as a state machine (sessions, funnel attempts, goals), the
  engine over many journeys, identity stitching and merging, applied-offset markers;
- `config`: the funnel YAML as models, the loader that refuses a bad file with its line, and
  the compiled matchers (globs, durations);
- `input`: the clickstream event, decoding raw messages in every input format, dead letters,
  the internal repartition record, channel classification;
- `records`: the output events (the contract's topics) and their deterministic ids.

A message's path: `input.decode` turns bytes into `input.event.ClickEvent`s (or rejections that
`input.deadletter` records), `input.repartition` carries them to the identity's partition,
`journeys.engine` applies them to `journeys.journey.Journey`s using `config.matching`, which
emit `records.outputs`; `measures` counts and judges those outputs.
"""
