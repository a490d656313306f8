"""The run's funnel counts (`streams.offline.summary`) from its outputs: each output lands in its
funnel version's books, a version of None and "" being the same books, however the outputs and
other runs' counts (`add`, the workers') arrive."""

from __future__ import annotations

from datetime import UTC, datetime

from streams.core.records.outputs import Carried, Dropoff, MicroConversion, OutputEvent, Stalled
from streams.offline.summary import FunnelCounts

AT = datetime(2024, 3, 11, tzinfo=UTC)


def micro(funnel: str | None, index: int | None, version: str | None, final: bool = False) -> MicroConversion:
    return MicroConversion(
        id=f"m{funnel}{index}{version}",
        kind="milestone" if funnel else "secondary",
        name="n",
        funnel=funnel,
        step=None if index is None else f"s{index}",
        step_index=index,
        final=final,
        event="e",
        event_id="e1",
        timestamp=AT,
        funnel_version=version,
    )


def dropoff(funnel: str, index: int, version: str | None) -> Dropoff:
    return Dropoff(
        id="d",
        funnel=funnel,
        step=f"s{index}",
        step_index=index,
        funnel_version=version,
        reason="window_expired",
        started_at=AT,
        time_in_funnel_ms=1,
        timestamp=AT,
    )


def carried(funnel: str, previous: str | None, version: str, reached: list[int]) -> Carried:
    return Carried(
        id="c",
        funnel=funnel,
        step="s1",
        step_index=1,
        funnel_version=version,
        previous_version=previous,
        previous_step="s1",
        previous_step_index=1,
        reached=reached,
        started_at=AT,
        timestamp=AT,
    )


OUTPUTS: list[OutputEvent] = [
    micro("f", 0, "v1"),
    micro("f", 0, None),
    micro("f", 0, ""),
    micro("f", 1, "v1", final=True),
    micro(None, None, None),  # a secondary microconversion: no funnel's
    dropoff("f", 0, None),
    dropoff("f", 0, "v1"),
    Stalled(id="s", funnel="f", step="s0", step_index=0, started_at=AT, idle_ms=1, timestamp=AT),
    micro("g", 0, "v1"),
    carried("f", "v1", "v2", [0, 1]),
    carried("f", None, "v2", [0]),
]


def test_each_output_lands_in_its_funnel_versions_books() -> None:
    counts = FunnelCounts()
    counts.add_outputs(OUTPUTS)
    rows = {(r["funnel"], r["funnel_version"]): r for r in counts.to_json()}
    assert set(rows) == {("f", "v1"), ("f", None), ("f", "v2"), ("g", "v1")}
    v1, none, v2 = rows["f", "v1"], rows["f", None], rows["f", "v2"]
    assert (v1["entered"], v1["completed"], v1["dropped"], v1["carried_out"]) == (1, 1, 1, 1)
    assert [(s["step_index"], s["reached"], s["dropped"]) for s in v1["steps"]] == [(0, 1, 1), (1, 1, 0)]
    assert (none["entered"], none["dropped"], none["carried_out"], none["open"]) == (2, 1, 1, 0)
    assert (v2["carried_in"], v2["entered"], v2["open"]) == (2, 0, 2)
    assert [(s["step_index"], s["reached"]) for s in v2["steps"]] == [(0, 2), (1, 1)]
    assert rows["g", "v1"]["entered"] == 1


def test_counts_added_from_elsewhere_share_the_books_outputs_land_in() -> None:
    # in parts, with another run's counts added in between (a version this one had not seen yet,
    # and one it had): the same totals as all the outputs counted in one go
    whole = FunnelCounts()
    whole.add_outputs(OUTPUTS)
    whole.add_outputs(OUTPUTS)
    parts, other = FunnelCounts(), FunnelCounts()
    parts.add_outputs(OUTPUTS[:3])
    other.add_outputs(OUTPUTS[3:] + OUTPUTS[:3])
    parts.add(other)
    parts.add_outputs(OUTPUTS[3:])
    assert parts.to_json() == whole.to_json()
    assert parts.lines() == whole.lines()
