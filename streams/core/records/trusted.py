"""Output records made from values the engine has already checked, and serialized as they are.

`build` fills a model's defaults in and sets its fields without validating them again; `to_json`
and `to_line` write the fields with orjson, byte for byte what `model_dump(mode="json")` then
orjson gives. Every output the engine emits goes through them, so they live apart from the
models (`records.outputs`, pydantic: the contract and the schema source, which mypyc cannot
compile) in a module it compiles (`streams.compiled.MODULES`); `records.outputs` re-exports them.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


class _Missing:
    """A required field `build` was not given: serializing it fails (`plain` refuses it)."""

    def __repr__(self) -> str:
        return "<missing>"


_MISSING: Final = _Missing()
# Any: compiled, an object ready to pass (an int constant is boxed again per call)
_JSON: Final[Any] = orjson.OPT_UTC_Z
_LINE: Final[Any] = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
# Final: compiled, each is a C static rather than a lookup in the module's dict per call
_TEMPLATES: Final[dict[type[BaseModel], tuple[dict[str, Any], tuple[tuple[str, Any], ...]]]] = {}
_new: Final = object.__new__
_dumps: Final = orjson.dumps
# BaseModel's slots set through their own descriptors' setters, bound once: what
# `object.__setattr__(instance, name, value)` ends in, without its search of the type for the name
# (about 500 instructions less a slot). No model class redefines these four names.
_slots: Final = BaseModel.__dict__
_set_dict: Final = _slots["__dict__"].__set__
_set_fields_set: Final = _slots["__pydantic_fields_set__"].__set__
_set_extra: Final = _slots["__pydantic_extra__"].__set__
_set_private: Final = _slots["__pydantic_private__"].__set__


def _template(cls: type[BaseModel]) -> tuple[dict[str, Any], tuple[tuple[str, Any], ...]]:
    """Every field in declaration order with its default (or _MISSING), and the default factories."""
    defaults: dict[str, Any] = {}
    factories: list[tuple[str, Any]] = []
    for name, info in cls.model_fields.items():
        if info.default_factory is not None:
            defaults[name] = _MISSING
            factories.append((name, info.default_factory))
        else:
            defaults[name] = _MISSING if info.is_required() else info.default
    template = (defaults, tuple(factories))
    _TEMPLATES[cls] = template
    return template


def build(cls: type[M], /, **values: Any) -> M:
    """A model instance from values known to be valid, without validating them again (a fifth of
    the cost of the constructor). Unknown or missing fields surface when it is serialized or
    validated (the tests validate every output the engine emits)."""
    defaults, factories = _TEMPLATES.get(cls) or _template(cls)
    instance: M = _new(cls)
    # The instance's own (empty) dict filled in place: an update into an empty dict clones the
    # defaults' table whole, where a merge into a new one inserts field by field, and no
    # `__dict__` to set (each object.__setattr__ costs a call through two argument tuples).
    data: dict[str, Any] = instance.__dict__
    data.update(defaults)
    data.update(values)
    for name, factory in factories:
        if name not in values:
            data[name] = factory()
    _set_fields_set(instance, set(values))
    _set_extra(instance, None)
    _set_private(instance, None)
    return instance


def given(cls: type[BaseModel], *left: str) -> set[str]:
    """The fields set (`model_fields_set`) of the instances a call site of `assemble` makes: the
    model's fields but those it `left` at their default, as `build` would have recorded them."""
    fields = set(cls.model_fields)
    unknown = set(left) - fields
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)}")
    return fields - set(left)


def assemble(
    cls: type[M], values: dict[str, Any], fields_set: set[str], extra: dict[str, Any] | None = None, /
) -> M:
    """`build` for a caller that gives every field, in the model's declaration order (serialized
    in that order), defaults included, in a dict of its own that becomes the instance's (so a
    new one per call), and the fields set computed once for its call site
    (`given`; shared by the instances, which are frozen): neither the merge of the defaults nor
    the set of the keys per call, a third of `build`'s cost. Nothing checks the order or the
    fields here: the tests serialize every output the engine emits against pydantic's own.
    `extra`: what validation leaves in a model that allows extra fields (`{}` when none came),
    None for one that does not (the outputs; the event's own models pass theirs)."""
    instance: M = _new(cls)
    _set_dict(instance, values)  # the caller's dict itself: no copy of the table
    _set_fields_set(instance, fields_set)
    _set_extra(instance, extra)
    _set_private(instance, None)
    return instance


def plain(value: Any) -> Any:
    """orjson's fallback: a nested model as its fields (it writes datetimes itself)."""
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"{value!r} is not JSON serializable")


_plain: Final = plain


def to_json(record: BaseModel) -> bytes:
    """The JSON form, serialized from the fields as they are: what `model_dump(mode="json")`
    then orjson would give (UTC as `Z`, as pydantic writes it), without the intermediate dict."""
    return _dumps(record.__dict__, default=_plain, option=_JSON)


def to_line(record: BaseModel) -> bytes:
    """`to_json` and a newline, in one call: an NDJSON line (offline mode's output)."""
    return _dumps(record.__dict__, default=_plain, option=_LINE)
