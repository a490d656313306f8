"""Every exception class the project defines derives from `ConversionsError`."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import streams
from streams.errors import ConversionsError


def project_exceptions() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(streams.__path__, "streams."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("streams.")
            ):
                found[f"{value.__module__}.{name}"] = value
    return found


def test_every_project_exception_derives_from_conversions_error() -> None:
    exceptions = project_exceptions()
    assert {"streams.core.config.loader.ConfigError", "streams.settings.SettingsError"} <= set(exceptions)
    strays = sorted(name for name, cls in exceptions.items() if not issubclass(cls, ConversionsError))
    assert not strays, f"not derived from ConversionsError: {strays}"


def test_they_keep_their_builtin_kind() -> None:
    from streams.core.config.loader import ConfigError
    from streams.errors import KafkaUnavailable, QueryTooLarge
    from streams.settings import SettingsError
    from streams.tools.infra import InfraError

    assert issubclass(ConfigError, ValueError) and issubclass(SettingsError, ValueError)
    assert issubclass(QueryTooLarge, ValueError)
    assert issubclass(InfraError, RuntimeError) and issubclass(KafkaUnavailable, RuntimeError)
