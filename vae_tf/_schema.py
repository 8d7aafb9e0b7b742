"""Option schemas (pydantic v2) and the one-line errors they give.

Every option a user can write — a slot of the composable objective, a latent family, a
likelihood, a network, a data set, a config section — is validated by a pydantic model before
anything is built or any MLflow run is created:

- :class:`Options` is the base of hand-written schemas (the remedies' ``Options``): strict types
  (``"3"`` is not a number, ``true`` is not an integer, an integer is a float), no NaN or
  infinity, unknown keys refused;
- :func:`signature_model` derives such a schema from a builder's signature (types from its
  annotations, defaults from its defaults), for registries whose entries are plain constructors
  (latent families, likelihoods, networks): one mechanism, no second list of option names to
  keep in step;
- :func:`validate` turns the first validation error into one line that names the option by its
  config path and, for a misspelt key, suggests the closest valid one.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Callable, Sequence
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

from vae_tf.errors import ConfigError

STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, arbitrary_types_allowed=True)


class Options(BaseModel):
    """Base of option schemas: strict, finite, closed (module docstring)."""

    model_config = STRICT


def _field_names(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at ``loc`` (the location of an unknown key), walking nested models."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (inspect.isclass(current) and issubclass(current, BaseModel)):
            return []
        field = current.model_fields.get(part)
        if field is None:
            return []
        current = field.annotation
        for arg in typing.get_args(current) or ():  # Optional[Model], Model | None
            if inspect.isclass(arg) and issubclass(arg, BaseModel):
                current = arg
    if inspect.isclass(current) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


#: The names pydantic gives the members of a union in an error's location (``hidden.list[int]``,
#: ``beta.float``): where the value failed every member, not a key of the config.
_UNION_MEMBER_TAGS = {"int", "float", "str", "bool", "none", "list", "tuple", "dict", "is-instance"}


def _is_union_member_tag(part) -> bool:
    return isinstance(part, str) and ("[" in part or part in _UNION_MEMBER_TAGS)


def one_line(err: pydantic.ValidationError, model: type[BaseModel], what: str) -> str:
    """The first error of ``err`` as one line: ``<what>.<key> <problem>, got <value>`` (unknown
    keys: ``unknown option <what>.<key>; did you mean <what>.<close>?``)."""
    errors = err.errors(include_url=False)
    # A misspelt key shows up twice: as unknown, and as the option it meant being missing; the
    # unknown one is what to fix.
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    loc = tuple(p for p in first.get("loc", ()) if not _is_union_member_tag(p))
    path = ".".join([what, *(str(p) for p in loc)]) if what else ".".join(str(p) for p in loc)
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        names = _field_names(model, loc)
        parent = path.rsplit(".", 1)[0] if "." in path else ""
        close = difflib.get_close_matches(str(loc[-1]), names, n=1)
        if close:
            return f"unknown option {path}; did you mean {parent + '.' if parent else ''}{close[0]}?"
        valid = ", ".join(names) if names else "none"
        return f"unknown option {path}; valid options: {valid}"
    if kind == "missing":
        return f"{path} is required"
    message = " ".join(str(first.get("msg", "is not valid")).split())
    if message.startswith("Value error, "):  # a validator's own ValueError: its text is the message
        return f"{path}: {message[len('Value error, '):]}"
    if "input" in first:
        return f"{path}: {message[0].lower() + message[1:]}, got {_describe(first['input'])}"
    return f"{path}: {message}"


def validate(model: type[BaseModel], data: Any, what: str):
    """``model.model_validate(data)``, with a one-line :class:`ConfigError` (``what`` is the config
    path of ``data``, e.g. ``objective.kl_weight``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what} must be a mapping of options, got {_describe(data)}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as err:
        raise ConfigError(one_line(err, model, what)) from None


def _lenient(annotation):
    """Annotations as YAML can satisfy them strictly: ``tuple[...]`` / ``Sequence`` become lists."""
    origin = typing.get_origin(annotation)
    if origin in (tuple, Sequence, list) or annotation in (tuple, Sequence):
        args = typing.get_args(annotation)
        item = args[0] if args and args[0] is not Ellipsis else Any
        return list[_lenient(item)] | tuple
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return typing.Union[tuple(_lenient(a) for a in typing.get_args(annotation))]
    return annotation


@functools.cache
def signature_model(factory: Callable, reserved: tuple[str, ...] = ()) -> type[BaseModel]:
    """A strict, closed schema of ``factory``'s keyword options (its ``__init__`` for a class, and
    those of its vae_tf base classes), from the annotations and defaults of its signature. Options
    without an annotation accept anything (the builder checks them); ``reserved`` names (what the
    caller passes itself: shapes, names, dtypes) are left out."""
    fields: dict[str, Any] = {}
    targets = [factory]
    if inspect.isclass(factory):
        targets = [c for c in factory.__mro__ if c is factory or (c.__module__.startswith("vae_tf") and "__init__" in vars(c))]
    for target in targets:
        function = target.__init__ if inspect.isclass(target) else target
        try:
            hints = typing.get_type_hints(function)
        except Exception:  # an annotation that does not resolve: fall back to Any for all
            hints = {}
        for name, param in inspect.signature(function).parameters.items():
            if name == "self" or name in reserved or name in fields or param.kind not in (
                    param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
                continue
            annotation = _lenient(hints.get(name, Any))
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[name] = (annotation, default)
    name = getattr(factory, "__name__", "options") + "Options"
    return pydantic.create_model(name, __base__=Options, **fields)


def check_factory_options(factory: Callable, options: dict, what: str, reserved: tuple[str, ...] = ()) -> None:
    """Validate ``options`` against :func:`signature_model` of ``factory`` (one-line errors)."""
    validate(signature_model(factory, tuple(reserved)), options, what)


__all__ = ["Options", "STRICT", "check_factory_options", "one_line", "signature_model", "validate"]
