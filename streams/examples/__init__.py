"""The example configuration, shipped inside the package so an installed wheel finds it.

`funnels.yaml` is the demo's and the default of `CONVERSIONS_FUNNELS`. `schemas/examples/`
holds a copy beside the JSON Schemas for readers of the contract; `conversions schemas` writes
it from this one and `conversions schemas --check` fails when they differ.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FUNNELS = Path(str(resources.files(__name__).joinpath("funnels.yaml")))
