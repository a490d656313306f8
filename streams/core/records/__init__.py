"""The records the engine writes: the output events of the contract's topics (`outputs`) and
their deterministic ids (`ids`), so that the same input always yields the same record."""
