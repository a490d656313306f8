"""`streams/core/input/referers/referers.json` written from `referers.yml` beside it.

referers.yml is the verbatim copy of referer-parser's list (see that folder's README); the engine
reads the same data as JSON, which parses in a fraction of a millisecond where the YAML took
30-70 ms of every process's start (bench/README.md, issue 30, session 7).
`tests/core/input/test_channel.py` fails when the two differ: after updating referers.yml, run
`python -m streams.tools.referers_json`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

FOLDER = Path(__file__).resolve().parent.parent / "core" / "input" / "referers"


def from_yaml(folder: Path = FOLDER) -> Any:
    """referers.yml as data (libyaml's safe loader when there, as before)."""
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load((folder / "referers.yml").read_text("utf-8"), Loader=loader)


def as_json(data: Any) -> bytes:
    return orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"


def main() -> None:
    target = FOLDER / "referers.json"
    target.write_bytes(as_json(from_yaml()))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
