"""An output message's counter increments computed straight into its batch's folded sums.

`core.counters.increments` says what each output counts, as a list of `Op`s; the counters
consumer used to build that list (unstamped, `Increments`) for every message and fold it item
by item afterwards: two passes over a few dozen tuples per output, the largest share of the
consumer's CPU. Here the same increments are computed and folded in one pass
(`Tallied.fold_into`): each field name is made once and appended to its key's slot in the batch
(`batch.BatchIncrements.slot`), where the increments by one (most of them, and small amounts as
that many) are counted by `collections`' C counter when the slots are stamped; other amounts,
decimals and members are folded as before. The decoded output is changed in place (its
identity pseudonymized, its breakdown values capped) rather than copied, and the cap's answers
are remembered per day (`CapMemo`). What Redis receives is the same, key for key and field for
field (tests/counters/test_tally.py holds it to `increments_of`).

A `Tallied` is also an iterable of `Op`s (`increments_of` of the output as capped), so the
in-memory store reads it like any other message's increments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson

from streams.core.config.matching import CompiledConfig
from streams.core.measures.cardinality import DAY_MS, KEPT_DAYS, OTHER, ValueCap
from streams.core.measures.counters import (
    AUDIENCE_DIMS,
    COHORT_LEVELS,
    COUNTED_TYPES,
    RECENT_MACROS,
    Op,
    decision_bucket,
    increments_of,
    recent_entry,
    time_to_convert_bucket,
    visitor_type_of,
)

if TYPE_CHECKING:
    from streams.counters.batch import BatchIncrements, Slot

_AUDIENCE_NAMES = tuple(dim.split(".", 1)[1] for dim in AUDIENCE_DIMS)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(value: Any) -> int:
    """An output's timestamp in epoch milliseconds: `core.counters._ms` (`event.to_epoch_ms`), here
    so that it runs compiled with the rest of the tally (two or three per output)."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000 + delta.microseconds // 1_000


class CapMemo:
    """`ValueCap.admit`'s admissions remembered per day: a value admitted stays admitted while its
    day is kept, so only a value not admitted yet that day reaches the cap (bounded as the cap is:
    the values it refuses, as many as producers send, are asked again, not remembered).
    Values are remembered by their text, as the cap tells them apart. Days are forgotten as the
    cap forgets them (all but the latest `KEPT_DAYS`, when a new one comes; this sees every day
    the cap sees, so a day remembered here is one the cap still keeps)."""

    __slots__ = ("cap", "days")

    def __init__(self, cap: ValueCap) -> None:
        self.cap = cap
        self.days: dict[int, dict[tuple[str, str], bool]] = {}

    def day(self, day: int) -> dict[tuple[str, str], bool]:
        """The remembered answers of `day`: (dimension, value's text) -> admitted."""
        known = self.days.get(day)
        if known is None:
            known = self.days[day] = {}
            for old in sorted(self.days)[:-KEPT_DAYS]:
                del self.days[old]
        return known

    def admit(self, known: dict[tuple[str, str], bool], day: int, dim: str, value: Any) -> Any:
        """`ValueCap.admit(day, dim, value)`; `known` is `day(day)`."""
        if value is None:
            return None
        text = value if type(value) is str else str(value)
        if (dim, text) in known:
            return value
        if self.cap.admit(day, dim, value) is value:
            known[(dim, text)] = True
            return value
        return OTHER  # not remembered: refused values are unbounded, and the cap stays full


class Tallier:
    """Turns output messages into `Tallied` increments, for one counting process."""

    __slots__ = ("bucket_ms", "config", "memo", "pseudonym")

    def __init__(
        self,
        config: CompiledConfig,
        bucket_ms: int,
        pseudonym: Callable[[str], str] | None = None,
        cap: ValueCap | None = None,
    ) -> None:
        self.config = config
        self.bucket_ms = bucket_ms
        self.pseudonym = pseudonym
        self.memo = CapMemo(cap) if cap is not None else None

    def decode(self, value: bytes) -> tuple[str, Tallied | None]:
        """An output message's id and its increments (None for a type not counted)."""
        return self._tally(orjson.loads(value))

    def tally(self, output: Mapping[str, Any]) -> tuple[str, Tallied | None]:
        """As `decode`, of an output decoded (not changed here)."""
        return self._tally(dict(output))

    def _tally(self, output: dict[str, Any]) -> tuple[str, Tallied | None]:
        """`tally`, changing `output` (pseudonymized and capped in place)."""
        output_id = str(output.get("id", ""))
        kind = output.get("type")
        if kind not in COUNTED_TYPES:
            return output_id, None
        if self.pseudonym is not None:
            identity = output.get("user_id") or output.get("anonymous_id")
            output["user_id"] = self.pseudonym(identity) if identity else None
            output["anonymous_id"] = None
        at = _ms(output["timestamp"])
        if self.memo is not None:
            self._cap(output, at)
        return output_id, Tallied(self, output, at)

    def _cap(self, output: dict[str, Any], at: int) -> None:
        """`cardinality.capped_output`, in place, the answers remembered (`CapMemo`)."""
        memo = self.memo
        assert memo is not None
        day = at // DAY_MS
        known = memo.day(day)
        admit = memo.admit
        get = output.get
        breakdowns = get("breakdowns")
        if breakdowns:
            output["breakdowns"] = {dim: admit(known, day, dim, value) for dim, value in breakdowns.items()}
        channel = get("channel")
        if channel is not None:
            output["channel"] = admit(known, day, "channel", channel)
        landing = get("landing_page")
        if landing is not None:
            output["landing_page"] = admit(known, day, "landing_page", landing)
        audience = get("audience")
        if audience:
            output["audience"] = {
                name: admit(known, day, f"audience.{name}", value) for name, value in audience.items()
            }


def _suffixes(values: dict[str, Any], dims: Any) -> list[str]:
    return [f"|{dim}={'' if (value := values.get(dim)) is None else value}" for dim in dims]


def _add(slot: Slot, names: list[str], amount: int) -> None:
    """`amount` to each of `names` in `slot`: a small positive amount as that many increments by
    one (counted in C when stamped), others summed here."""
    if 0 < amount <= 4:
        slot[0].extend(names * amount)
    else:
        ints = slot[1]
        for name in names:
            ints[name] = ints.get(name, 0) + amount


class Tallied:
    """One output's increments, as capped and pseudonymized when it was decoded: folded into a
    batch (`fold_into`), or listed (iterating gives `increments_of`' ops)."""

    __slots__ = ("at", "output", "tallier")

    def __init__(self, tallier: Tallier, output: dict[str, Any], at: int) -> None:
        self.tallier = tallier
        self.output = output
        self.at = at

    def __iter__(self) -> Iterator[Op]:
        planned = increments_of(self.output, self.tallier.config, self.tallier.bucket_ms)
        return iter(() if planned is None else planned)

    def fold_into(self, batch: BatchIncrements) -> None:
        """Add this output's increments to `batch`, as `batch.add(increments_of(...))` would."""
        output, at = self.output, self.at
        get = output.get
        kind = get("type")
        size = self.tallier.bucket_ms
        bucket = at - at % size
        slots = batch.slots
        # the head: keys without a bucket
        maxima = batch.maxima
        meta = maxima.get("meta")
        if meta is None:
            meta = maxima["meta"] = {}
        held = meta.get("latest")
        if held is None or at > (held if type(held) is int else float(held)):
            meta["latest"] = at
        version = get("funnel_version")
        if version and kind != "session":
            versions = maxima.get("fv")
            if versions is None:
                versions = maxima["fv"] = {}
            name = f"{output['funnel']}@{version}"
            held = versions.get(name)
            if held is None or at > (held if type(held) is int else float(held)):
                versions[name] = at
        if kind == "micro":
            key: tuple[str, int, int, int] = ("g:", bucket, size, 0)
            slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
            if get("kind") == "secondary":
                slot[0].extend(("mi", f"m:{output['name']}"))
                return
            slot[0].append("mi")
            dims = self._dims()
            if dims is None:
                return
            funnel = output["funnel"]
            name = f"{funnel}@{version}" if version else str(funnel)
            k = int(output["step_index"])
            entered = f"e:{k}"
            key = (f"f:{name}:", bucket, size, 0)
            slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
            breakdowns = get("breakdowns") or {}
            slot[0].extend(
                [
                    entered,
                    *[f"{entered}|{dim}={'' if (v := breakdowns.get(dim)) is None else v}" for dim in dims],
                ]
            )
            key = (f"u:{name}:{k}:", bucket, size, 0)
            slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
            slot[3][get("user_id") or get("anonymous_id") or ""] = None
            milestone = get("kind") == "milestone"
            started_at = get("started_at")
            started = None if started_at is None or not (k > 0 or milestone) else _ms(started_at)
            previous_at = get("previous_at")
            previous = None if previous_at is None or k == 0 else _ms(previous_at)
            if k > 0 and (started is not None or previous is not None):
                key = (f"t:{name}:", bucket, size, 0)
                slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
                ints = slot[1]
                if started is not None:
                    elapsed = max(0, at - started)
                    slot[0].append(f"t:{k}:{time_to_convert_bucket(elapsed)}")
                    ints[f"ts:{k}"] = ints.get(f"ts:{k}", 0) + elapsed
                if previous is not None:
                    waited = max(0, at - previous)
                    slot[0].append(f"g:{k}:{time_to_convert_bucket(waited)}")
                    ints[f"gs:{k}"] = ints.get(f"gs:{k}", 0) + waited
            if started is not None and milestone:
                key = (f"a:{name}:", started - started % size, size, COHORT_LEVELS)
                slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
                slot[0].append(entered)
                reached = f"r:{name}:"
                key = (reached, bucket, size, COHORT_LEVELS)
                slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
                slot[0].append(entered)
                if k > 0 and previous is not None:
                    key = (reached, previous - previous % size, size, COHORT_LEVELS)
                    slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
                    slot[0].append(f"n:{k - 1}")
            return
        if kind in ("dropoff", "stalled"):
            dims = self._dims()
            if dims is None:
                return
            funnel = output["funnel"]
            name = f"{funnel}@{version}" if version else str(funnel)
            k = int(output["step_index"])
            field = f"st:{k}" if kind == "stalled" else f"d:{k}"
            key = (f"f:{name}:", bucket, size, 0)
            slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
            breakdowns = get("breakdowns") or {}
            names = [
                field,
                *[f"{field}|{dim}={'' if (v := breakdowns.get(dim)) is None else v}" for dim in dims],
            ]
            if kind == "stalled":
                slot[0].extend(names)
                return
            reason = f"d:{k}:{output['reason']}"
            names.append(reason)
            slot[0].extend(names)
            started_at = get("started_at")
            if started_at is not None:
                started = _ms(started_at)
                key = (f"a:{name}:", started - started % size, size, COHORT_LEVELS)
                slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
                slot[0].extend((field, reason))
                left = started + int(get("time_in_funnel_ms") or 0)
                key = (f"r:{name}:", left - left % size, size, COHORT_LEVELS)
                slot = slots.get(key) or slots.setdefault(key, ([], {}, {}, {}))
                slot[0].append(field)
            return
        if kind == "carried":
            self._carried(batch, bucket)
            return
        self._visit(batch, bucket, kind == "macro")

    def _dims(self) -> tuple[str, ...] | None:
        """`core.counters._output_dims`."""
        output = self.output
        funnel = self.tallier.config.funnels_by_name.get(str(output.get("funnel")))
        if funnel is not None:
            return funnel.breakdowns
        if output.get("funnel_version"):
            return tuple(output.get("breakdowns") or {})
        return None

    def _carried(self, batch: BatchIncrements, bucket: int) -> None:
        """An attempt carried from one version of its funnel to the next."""
        output = self.output
        size = self.tallier.bucket_ms
        get = output.get
        dims = self._dims()
        if dims is None:
            return
        funnel = str(output["funnel"])
        previous, current = get("previous_version"), get("funnel_version")
        old = f"{funnel}@{previous}" if previous else funnel
        new = f"{funnel}@{current}" if current else funnel
        suffixes = _suffixes(get("breakdowns") or {}, dims)
        left = f"co:{output['previous_step_index']}"
        ones = batch.slot(f"f:{old}:", bucket, size, 0)[0]
        ones.append(left)
        ones += [left + s for s in suffixes]
        reached = get("reached") or ()
        ones = batch.slot(f"f:{new}:", bucket, size, 0)[0]
        for j in reached:
            ones.append(f"ci:{j}")
            ones += [f"ci:{j}{s}" for s in suffixes]
        started_at = get("started_at")
        if started_at is not None:
            started = _ms(started_at)
            moment = started - started % size
            batch.slot(f"a:{old}:", moment, size, COHORT_LEVELS)[0].append(left)
            batch.slot(f"a:{new}:", moment, size, COHORT_LEVELS)[0].extend([f"ci:{j}" for j in reached])

    def _visit(self, batch: BatchIncrements, bucket: int, macro: bool) -> None:
        """A macroconversion or a closed session: the goals or sessions, and the channels table."""
        output = self.output
        size = self.tallier.bucket_ms
        get = output.get
        channel, landing = get("channel"), get("landing_page")
        channels = [
            f"|channel={'' if channel is None else channel}",
            f"|landing_page={'' if landing is None else landing}",
        ]
        tables = channels
        audience = get("audience")
        if audience:
            tables = channels + [
                f"|audience.{name}={'' if (v := audience.get(name)) is None else v}"
                for name in _AUDIENCE_NAMES
            ]
        visitor = f"|visitor_type={visitor_type_of(output)}"
        # every `_channel_fields` suffix: per table value, again with the visitor type, and alone
        every = [*tables, *[s + visitor for s in tables], visitor]
        table = batch.slot("c:", bucket, size, 0)
        ones, floats = table[0], table[2]
        if macro:
            goal = output["goal"]
            value = get("value")
            breakdowns = get("breakdowns") or {}
            values = {**breakdowns, "channel": channel, "landing_page": landing}
            suffixes = channels + _suffixes(values, breakdowns)
            goals = batch.slot("g:", bucket, size, 0)
            counted = f"n:{goal}"
            goals[0].append(counted)
            goals[0].extend([counted + s for s in suffixes])
            amount = Decimal(0)
            if value is not None:
                amount = Decimal(str(float(value)))
                summed = goals[2]
                for name in [f"v:{goal}", *[f"v:{goal}{s}" for s in suffixes]]:
                    summed[name] = summed.get(name, Decimal(0)) + amount
            decision = int(get("decision_time_ms") or 0)
            goals[1][f"dt:{goal}"] = goals[1].get(f"dt:{goal}", 0) + decision
            goals[0].append(f"dth:{goal}:{decision_bucket(decision)}")
            batch.slot(f"ug:{goal}:", bucket, size, 0)[3][get("user_id") or get("anonymous_id") or ""] = None
            ones += [counted + s for s in every]
            if value is not None:
                for name in [f"v:{goal}{s}" for s in every]:
                    floats[name] = floats.get(name, Decimal(0)) + amount
            _add(table, [f"dt:{goal}{s}" for s in every], decision)
            batch.lists_add("recent", recent_entry(output), RECENT_MACROS)
            return
        sessions = batch.slot("s:", bucket, size, 0)
        landing_first = [channels[1], channels[0]]
        page_views = int(get("page_views") or 0)
        duration = int(get("duration_ms") or 0)
        sessions[0].append("n")
        sessions[0].extend([f"n{s}" for s in landing_first])
        _add(sessions, ["pv", *[f"pv{s}" for s in landing_first]], page_views)
        _add(sessions, ["dur", *[f"dur{s}" for s in landing_first]], duration)
        reached = get("conversions") or []
        ones += [f"s{s}" for s in every]
        _add(table, [f"mi{s}" for s in every], int(get("microconversions") or 0))
        _add(table, [f"pv{s}" for s in every], page_views)
        _add(table, [f"dur{s}" for s in every], duration)
        if page_views <= 1:
            ones += [f"b{s}" for s in every]
        if reached:
            _add(table, [f"cv{s}" for s in every], len(reached))
            for goal in sorted(set(reached)):
                ones += [f"cs:{goal}{s}" for s in every]
