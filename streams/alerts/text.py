"""What an alert says to a person: one summary line, a description, the dashboard link. Every
receiver words the alert with these, so Slack, PagerDuty and Alertmanager read alike."""

from __future__ import annotations

from urllib.parse import urlencode

from streams.core.records.outputs import Alert


def series(alert: Alert) -> str:
    """funnel -> step [by values]."""
    by = ",".join(f"{k}={v}" for k, v in alert.by.items())
    return f"{alert.funnel} -> {alert.step}" + (f" [{by}]" if by else "")


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def summary(alert: Alert) -> str:
    """One line: what fell (or recovered), how far, since when."""
    if alert.state == "resolved":
        return (
            f"Resolved: {series(alert)} conversion back at {_rate(alert.rate)} "
            f"(baseline {_rate(alert.baseline_rate)}) at {alert.timestamp:%Y-%m-%d %H:%M} UTC"
        )
    drop = ""
    if alert.rate is not None and alert.baseline_rate:
        drop = f", {1 - alert.rate / alert.baseline_rate:.0%} below"
    return (
        f"{series(alert)} conversion fell to {_rate(alert.rate)} from a baseline of "
        f"{_rate(alert.baseline_rate)}{drop} ({alert.entered} entered) "
        f"at {alert.timestamp:%Y-%m-%d %H:%M} UTC"
    )


def evidence(alert: Alert) -> str:
    """How the rule judged: the cusum's statistic, or the window's test."""
    if alert.method == "cusum" and alert.statistic is not None and alert.threshold is not None:
        return (
            f"cusum statistic {alert.statistic:.2f} >= threshold {alert.threshold:.2f} over "
            f"{alert.trials} attempts ({alert.failures} failed); outcomes known after "
            f"{alert.resolution_delay}; at most one false alarm per {alert.false_alarm_every} on "
            "steady traffic"
        )
    text = f"window {alert.window} against baseline {alert.baseline}"
    if alert.p_value is not None:
        text += f", p = {alert.p_value:.3g}"
        if alert.p_threshold is not None:
            text += f" (fires at {alert.p_threshold:.3g})"
    return text


def root_cause(alert: Alert) -> str:
    return alert.root_cause.summary if alert.root_cause is not None else ""


def description(alert: Alert, dashboard: str | None) -> str:
    parts = [summary(alert) + ".", evidence(alert) + "."]
    if alert.root_cause is not None:
        parts.append(f"Root cause: {alert.root_cause.summary}.")
    if dashboard:
        parts.append(f"Dashboard: {dashboard}")
    parts.append(f"Alert {alert.id}, incident {alert.incident_id}.")
    return " ".join(parts)


def dashboard_link(base: str | None, alert: Alert) -> str | None:
    if not base:
        return None
    return f"{base.rstrip('/')}/?{urlencode({'funnel': alert.funnel, 'step': alert.step})}"
