"""Decoding our events, path by path: CPU per event of each way to turn a line into a `ClickEvent`.

Issue 30 item 1 asked for pydantic's fastest path and msgspec measured on our own events before
choosing. Each path decodes the same lines (the first `--lines` of an NDJSON file of single
events, `conversions simulate`), best of `--repeat`, CPU seconds (`time.process_time`) per event:

- `decode_message`: what ingest and offline mode run (orjson, `ClickEvent.model_validate` with
  the nesting context, unknown fields counted);
- `orjson.loads`: parsing alone, the floor of every path that needs the dict (format detection,
  unknown fields);
- `loads + model_validate`, `model_validate_json`: pydantic's two entry points;
- `msgspec Struct`: `msgspec.json.Decoder` into an equivalent Struct (the same lengths and
  patterns, `parse_timestamp` in `__post_init__`), the figure msgspec is quoted at;
- `msgspec + ClickEvent`: the same, then the `ClickEvent` the engine takes, built from the
  Struct's fields without validation (`records.trusted.assemble`, as `ClickEvent.trusted` does): what
  adopting msgspec in front of today's model would cost;
- `trusted(to_json_dict)` and `model_validate(to_json_dict)`: the journeys agent reading the
  repartitioned events back, with and without a second validation (item 1(b)).

msgspec is not a dependency: `pip install msgspec` to include its rows.

    python -m bench.decode_paths --input FILE [--lines 60000] [--repeat 3]
"""

# no `from __future__ import annotations`: msgspec reads the Structs' annotations, local aliases included

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson

from streams.core.input.decode import decode_message
from streams.core.input.event import (
    PRINTABLE,
    Campaign,
    ClickEvent,
    Page,
    campaign_from_url,
    nesting_limit,
    parse_timestamp,
    to_epoch_ms,
)
from streams.core.records.trusted import assemble


def _msgspec_paths(lines: list[bytes]) -> dict[str, Callable[[], object]]:
    try:
        import msgspec
    except ImportError:
        return {}
    Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    # `\Z`, not `$`: Python's `$` also matches before a final newline, pydantic's (Rust) does not
    Printable = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=PRINTABLE[:-1] + r"\Z")]
    Url = Annotated[str, msgspec.Meta(max_length=8192)]
    Short = Annotated[str, msgspec.Meta(max_length=256)]

    class MPage(msgspec.Struct, forbid_unknown_fields=True):
        url: Url | None = None
        referrer: Url | None = None
        title: Annotated[str, msgspec.Meta(max_length=2048)] | None = None

    class MCampaign(msgspec.Struct, forbid_unknown_fields=True):
        source: Short | None = None
        medium: Short | None = None
        name: Short | None = None
        term: Short | None = None
        content: Short | None = None

    class MEvent(msgspec.Struct):
        event_id: Id
        event: Id
        timestamp: Any
        user_id: Printable | None = None
        anonymous_id: Printable | None = None
        session_id: Printable | None = None
        page: MPage | None = None
        campaign: MCampaign | None = None
        context: dict[str, Any] = {}
        properties: dict[str, Any] = {}

        def __post_init__(self) -> None:
            self.timestamp = parse_timestamp(self.timestamp)

    decoder = msgspec.json.Decoder(MEvent)
    to_builtins = msgspec.structs.asdict

    def nested(cls: Any, struct: Any) -> Any:
        return None if struct is None else assemble(cls, to_builtins(struct), set(), {})

    def to_click(s: MEvent) -> ClickEvent:
        page = nested(Page, s.page)
        campaign = nested(Campaign, s.campaign)
        if campaign is None and page is not None:
            campaign = campaign_from_url(page.url)
        data = {
            "event_id": s.event_id,
            "event": s.event,
            "user_id": s.user_id,
            "anonymous_id": s.anonymous_id,
            "session_id": s.session_id,
            "timestamp": s.timestamp,
            "page": page,
            "campaign": campaign,
            "context": s.context,
            "properties": s.properties,
            "audience": None,
            "ts_ms": to_epoch_ms(s.timestamp),
        }
        return assemble(ClickEvent, data, set())

    sample = [ClickEvent.model_validate(orjson.loads(line)) for line in lines[:2_000]]
    assert [to_click(decoder.decode(line)) for line in lines[:2_000]] == sample
    return {
        "msgspec Struct": lambda: _each(decoder.decode, lines),
        "msgspec + ClickEvent": lambda: _each(lambda line: to_click(decoder.decode(line)), lines),
    }


def _each(decode: Callable[[Any], object], items: list[Any]) -> None:
    """Each item decoded and dropped, as a process does (a list of them all would make the
    collector walk every object kept so far, which no real path pays)."""
    for item in items:
        decode(item)


def measure(path: Path, count: int, repeat: int) -> dict[str, float]:
    with path.open("rb") as stream:
        lines = [line.rstrip(b"\r\n") for _, line in zip(range(count), stream, strict=False)]
    context = nesting_limit(16)
    dicts = [orjson.loads(line) for line in lines]
    dumped = [ClickEvent.model_validate(d, context=context).to_json_dict() for d in dicts]
    paths: dict[str, Callable[[], object]] = {
        "decode_message": lambda: _each(decode_message, lines),
        "orjson.loads": lambda: _each(orjson.loads, lines),
        "loads + model_validate": lambda: _each(
            lambda line: ClickEvent.model_validate(orjson.loads(line), context=context), lines
        ),
        "model_validate_json": lambda: _each(
            lambda line: ClickEvent.model_validate_json(line, context=context), lines
        ),
        **_msgspec_paths(lines),
        "model_validate(to_json_dict)": lambda: _each(ClickEvent.model_validate, dumped),
        "trusted(to_json_dict)": lambda: _each(ClickEvent.trusted, dumped),
    }
    best: dict[str, float] = {}
    for _ in range(repeat):  # every path once per round, so a change of load touches them all
        for name, run in paths.items():
            started = time.process_time()
            run()
            spent = (time.process_time() - started) / len(lines) * 1e6
            best[name] = min(best.get(name, spent), spent)
    return {name: round(us, 2) for name, us in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--lines", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps({"us_per_event": measure(args.input, args.lines, args.repeat)}, indent=1))


if __name__ == "__main__":
    main()
