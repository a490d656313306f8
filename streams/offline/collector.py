"""The cyclic garbage collector's setting while offline mode runs through a file.

A run keeps many objects alive for a while (a block's decoded events, every open journey, the
evaluators' minutes) and allocates many small ones that die young (outputs, dicts of fields): with
the default threshold (a young collection every 700 allocations) the collector's full passes walk
every journey again and again. With the start-up heap frozen out of its sight and young
collections every 50,000 allocations, one process over the bench's 163,276 events spent about 5 %
less CPU, the workers about a sixth less (bench/README.md, issue 30). The run makes no cyclic
garbage to speak of (those collections found none): at 500,000 (the count is of allocations less
deallocations, so it measures growth, which the journey cache's flushes keep bounded) the compiled
process spends 0.04 s collecting instead of 0.22 s, at the same peak RSS."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

THRESHOLDS = (500_000, 50, 100)


@contextmanager
def paused() -> Iterator[None]:
    """No collection while a command starts: its imports and configuration allocate hundreds of
    thousands of objects that live to the end, which young collections would walk in vain (a
    one-line `conversions process` ran about 3 % fewer instructions with none)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def relax() -> None:
    """For a process that ends with the run (a worker): freeze what is alive and relax."""
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)


@contextmanager
def relaxed() -> Iterator[None]:
    """The relaxed setting for the length of a run, then the caller's own back (what the caller
    had frozen itself stays frozen)."""
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    relax()
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        if not frozen:
            gc.unfreeze()
