"""Typed configs: dataclasses validated at construction, YAML files, `key=value` overrides.

    cfg = load_config(RunConfig, "configs/dpo_tiny.yaml", ["train.learning_rate=1e-4"])

An unknown key, a wrong type or a bad value is a ConfigError naming the key path (and the file).
YAML is read with `safe_load` below (yaml's SafeLoader, with YAML 1.2 booleans: only true / false, so
`mixed_precision: no` is the string "no", not False); nothing in a config is ever evaluated as code.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")

_BOOL = "tag:yaml.org,2002:bool"


class _SafeLoader12(yaml.SafeLoader):
    """yaml.SafeLoader whose booleans are YAML 1.2's (true / false): YAML 1.1 also reads yes / no / on / off as
    booleans, which turns `train.mixed_precision=no` into False."""


_SafeLoader12.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SafeLoader12.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def safe_load(stream):
    """yaml.safe_load with YAML 1.2 booleans (see _SafeLoader12)."""
    return yaml.load(stream, Loader=_SafeLoader12)  # noqa: S506 - a SafeLoader subclass


class ConfigError(ValueError):
    pass


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = {}
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors[a] = str(e)
        sections = [a for a in errors if dataclasses.is_dataclass(a)]
        if isinstance(value, dict) and len(sections) == 1:  # an optional section (model.lora): the key it names
            raise ConfigError(errors[sections[0]])
        if len(errors) == 1:  # Optional[X]: X's own message ("expected a number, got ...")
            raise ConfigError(next(iter(errors.values())) + (" (or null)" if type(None) in args else ""))
        raise ConfigError(f"{path}: {value!r} is not a {' or '.join(_type_name(a) for a in args)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not one of {list(allowed)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping for section {_type_name(tp)}, got {type(value).__name__}")
        return from_dict(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        (inner,) = get_args(tp)[:1] or (Any,)
        return [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            hint = " (quote it: key='\"{...}\"')" if isinstance(value, (dict, list)) else ""
            raise ConfigError(f"{path}: expected a string, got {value!r}{hint}")
        return value
    return value


# keys of other tools that do not mean the same here: the hint says what to write instead
FOREIGN_KEYS = {
    "beta_dpo": "; diffusers' --beta_dpo B (loss -log sigmoid(B x ...)) is prefkit's method.beta = 2B (the paper's "
                "form, -log sigmoid(-(beta/2) x ...)): --beta_dpo 2500 is method.beta 5000",
}


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = FOREIGN_KEYS.get(str(key)) or (f"; did you mean '{close[0]}'?" if close else "")
            raise ConfigError(f"{full}: unknown key{hint} (known: {', '.join(fields)})")
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        obj = cls(**kwargs)
    except TypeError as e:  # missing required field
        raise ConfigError(f"{path or cls.__name__}: {e}") from None
    except ConfigError:
        raise
    except ValueError as e:  # __post_init__ validation
        raise ConfigError(f"{path or cls.__name__}: {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:  # not a YAML scalar or list ("Question: {prompt} Answer:"): the text itself
            value = raw
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{p}' is not a section")
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    data: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [])
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None
