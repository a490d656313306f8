"""The project's exceptions: one base, `ConversionsError`, that every one of them derives from.

Each also keeps the built-in class it always had (`ValueError` for bad input, `RuntimeError`
for an environment that is not there), so `except ValueError` in callers still holds. The ones
raised in one room and handled in another live here; the others live beside the code that
raises them (`core.config_loader.ConfigError`, `settings.SettingsError`, `tools.infra.InfraError`,
`web.views.BadQuery`) and derive from `ConversionsError` all the same.
"""

from __future__ import annotations


class ConversionsError(Exception):
    """Base of every exception this project raises on purpose."""


class QueryTooLarge(ConversionsError, ValueError):
    """A counters query over a window that would read too many keys (narrow the window)."""


class KafkaUnavailable(ConversionsError, RuntimeError):
    """The broker did not answer within the time allowed, or lacks a topic the worker reads."""
