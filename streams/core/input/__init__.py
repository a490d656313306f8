"""Input: what arrives on the clickstream and how it becomes events.

The event model (`event`), the decoding of raw message values in every format (`decode`, over
`formats/` for Segment and Snowplow), what could not be decoded (`rejection`, `deadletter`), the
internal record that carries events to their identity's partition (`repartition`), and the
channel an event's campaign and referrer belong to (`channel`).
"""
