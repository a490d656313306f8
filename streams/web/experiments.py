"""`GET /experiments`: every configured experiment's live state, as a plain function over the
`ports.ExperimentReader` protocol (the evaluator that the alerts service keeps up to date from
`conversions.micro`), so the view knows nothing of Faust or Kafka and the tests call it with a
small reader.

The figures are the evaluator's own (`core.experiments`): the always-valid p-value and the
confidence sequence are running minima and intersections over every minute judged, so only the
evaluator that looked at every minute can serve them; this view reads, it never recomputes.
An experiment that has not seen an attempt yet is listed with `updated_at: null` and no
variants, so a dashboard can show it as waiting rather than missing.
"""

from __future__ import annotations

from streams.core.config.matching import CompiledConfig
from streams.core.measures.experiments import describe
from streams.ports import ExperimentReader
from streams.web.views import Answer

PARAMETERS = ("name", "funnel")


def experiments(reader: ExperimentReader | None, config: CompiledConfig, query: dict[str, str]) -> Answer:
    """Every experiment (or the one `name`s, or those on `funnel`), with each variant's figures
    and the experiment's latest decision changes. 400 for a parameter it does not know, 404 for
    an experiment or funnel the configuration does not have."""
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        return 400, {"error": f"unknown parameter {unknown[0]!r}", "parameters": list(PARAMETERS)}
    configured = config.source.experiments
    chosen = list(configured)
    if "name" in query:
        chosen = [e for e in configured if e.name == query["name"]]
        if not chosen:
            return 404, {
                "error": f"no experiment {query['name']!r}",
                "experiments": [e.name for e in configured],
            }
    if "funnel" in query:
        if query["funnel"] not in config.funnels_by_name:
            return 404, {"error": f"no funnel {query['funnel']!r}", "funnels": sorted(config.funnels_by_name)}
        chosen = [e for e in chosen if e.funnel == query["funnel"]]
    states = {s.experiment: s for s in reader.experiments()} if reader is not None else {}
    changes = list(reader.experiment_changes) if reader is not None else []
    return 200, {
        "watermark_ms": reader.watermark() if reader is not None else None,
        "experiments": [
            describe(config, e, states.get(e.name), [c for c in changes if c.experiment == e.name])
            for e in chosen
        ],
    }
