"""The pure core: models, funnel configuration and matching, the journey state machine.

Nothing under this package imports Faust, aiokafka or Redis, and nothing reads a clock:
every function is a deterministic function of its inputs, in event time.
"""
