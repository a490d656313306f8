"""Conversion Streams: real-time micro- and macroconversions from clickstream events."""

__version__ = "0.1.0"
