"""Generic typed-config machinery for nested dataclasses.

The schema lives elsewhere (``xvl/config.py``) as nested ``@dataclass``es with
defaults.  This module turns plain dicts / YAML files / ``key=value`` command-line
overrides into validated instances of such a schema and back:

* :func:`from_dict`       -- (partial) dict -> dataclass instance, strictly type checked
* :func:`to_dict`         -- dataclass instance -> plain dict (``yaml.safe_dump``-able)
* :func:`apply_overrides` -- apply dotted ``a.b.c=value`` overrides to a nested dict
* :func:`load_config`     -- YAML file + overrides -> instance, then ``validate()`` hooks
* :func:`save_config`     -- instance -> YAML file (atomic write)

Supported field types: ``int``, ``float``, ``bool``, ``str``, ``Optional[X]`` /
``X | None`` (and general unions), ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``,
``dict[K, V]``, ``Literal[...]``, ``Any`` and nested dataclasses.  Annotations may
be strings (``from __future__ import annotations``); they are resolved with
:func:`typing.get_type_hints`, so schema classes must be defined at module level.

Only the standard library, PyYAML and xvl.atomic (stdlib only) are used (importing this must stay cheap).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, Iterable

import yaml

from xvl.atomic import atomic_write_text

__all__ = [
    "ConfigError",
    "from_dict",
    "to_dict",
    "apply_overrides",
    "load_config",
    "save_config",
    "validate_config",
]

_NoneType = type(None)
_MAX_REPR = 80


class ConfigError(ValueError):
    """Invalid configuration. Messages always name the full dotted key."""


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # NameError for unresolvable forward references, ...
        raise TypeError(
            f"cannot resolve type annotations of config class {cls.__qualname__}: {e} "
            "(config dataclasses must be defined at module level)"
        ) from e


def _init_fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    if _is_union(tp):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not _NoneType]
        if len(rest) == 1 and len(rest) != len(args):
            return rest[0], True
    return tp, False


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _show(value: Any) -> str:
    r = repr(value)
    if len(r) > _MAX_REPR:
        r = r[: _MAX_REPR - 3] + "..."
    return f"{r} ({type(value).__name__})"


def _type_name(tp: Any) -> str:
    if tp is Any:
        return "Any"
    if tp is _NoneType or tp is None:
        return "None"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if _is_union(tp):
        inner, optional = _unwrap_optional(tp)
        if optional:
            return f"Optional[{_type_name(inner)}]"
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if args:
            parts = ["..." if a is Ellipsis else _type_name(a) for a in args]
            return f"{name}[{', '.join(parts)}]"
        return name
    if isinstance(tp, type):
        return tp.__name__
    return str(tp)


def _unknown_key_error(key: Any, prefix: str, valid: Iterable[str], context: str = "") -> ConfigError:
    valid = list(valid)
    full = _join(prefix, key)
    match = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    if match:
        hint = f"did you mean '{_join(prefix, match[0])}'?"
    elif valid:
        where = f" under '{prefix}'" if prefix else ""
        hint = f"valid keys{where}: " + ", ".join(f"'{v}'" for v in valid)
    else:
        hint = f"'{prefix}' takes no keys" if prefix else "no keys are allowed"
    return ConfigError(f"unknown config key '{full}'{context} — {hint}")


def _type_error(key: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"invalid value for config key '{key}': expected {_type_name(tp)}, got {_show(value)}")


# --------------------------------------------------------------------------- from_dict


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp`` and return the converted value."""
    if tp is Any or tp is object:
        return value

    if _is_union(tp):
        args = typing.get_args(tp)
        if value is None:
            if _NoneType in args:
                return None
            raise _type_error(key, tp, value)
        candidates = [a for a in args if a is not _NoneType]
        if len(candidates) == 1:
            return _convert(value, candidates[0], key)
        errors = []
        for a in candidates:
            try:
                return _convert(value, a, key)
            except ConfigError as e:
                errors.append(e)
        # a nested-dataclass error is more informative than "expected X | Y"
        if isinstance(value, Mapping):
            for a, e in zip(candidates, errors):
                if _is_dataclass_type(a):
                    raise e
        raise _type_error(key, tp, value)

    if tp is None or tp is _NoneType:
        if value is None:
            return None
        raise _type_error(key, tp, value)

    if value is None:  # None is only accepted by Optional / Any / None
        raise _type_error(key, tp, value)

    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if origin is typing.Literal:
        for allowed in args:
            if value == allowed and type(value) is type(allowed):
                return allowed
        raise ConfigError(
            f"invalid value for config key '{key}': {_show(value)} is not allowed; "
            f"allowed values: {', '.join(repr(a) for a in args)}"
        )

    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return from_dict(tp, value, prefix=key)
        raise ConfigError(
            f"invalid value for config key '{key}': expected a mapping for section "
            f"{tp.__name__}, got {_show(value)}"
        )

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, bool):
            raise _type_error(key, tp, value)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads '3e-4' as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)

    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set, frozenset):
        container = origin or tp
        if not isinstance(value, (list, tuple)) and not (
            container in (set, frozenset) and isinstance(value, (set, frozenset))
        ):
            raise _type_error(key, tp, value)
        items = list(value)
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if args == ((),):  # tuple[()]
                args = ()
            if len(items) != len(args):
                raise ConfigError(
                    f"invalid value for config key '{key}': expected {_type_name(tp)} "
                    f"({len(args)} items), got {len(items)} items: {_show(value)}"
                )
            out = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(items, args))]
        else:
            elem = args[0] if args else Any
            out = [_convert(v, elem, f"{key}[{i}]") for i, v in enumerate(items)]
        return container(out)

    if origin in (dict, Mapping) or tp in (dict, Mapping) or origin is typing.Dict:
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        ktp, vtp = args if len(args) == 2 else (Any, Any)
        out = {}
        for k, v in value.items():
            sub = _join(key, k)
            if ktp is not Any:
                try:
                    k = _convert(k, ktp, sub)
                except ConfigError:
                    raise ConfigError(
                        f"invalid key in config key '{key}': expected {_type_name(ktp)} keys, got {_show(k)}"
                    ) from None
            out[k] = _convert(v, vtp, sub)
        return out

    if isinstance(tp, type):
        if isinstance(value, tp) and not (isinstance(value, bool) and tp is not bool and tp in (int, float)):
            return value
        raise _type_error(key, tp, value)

    raise TypeError(f"unsupported config type {tp!r} for key '{key}'")


def from_dict(cls, data: Mapping | None, prefix: str = ""):
    """Build dataclass ``cls`` from a (possibly partial) dict, recursively.

    Missing keys take the dataclass defaults; unknown keys and type mismatches raise
    :class:`ConfigError` naming the full dotted key (``prefix`` is prepended).
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"from_dict expects a dataclass type, got {cls!r}")
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = f"config key '{prefix}'" if prefix else "the config"
        raise ConfigError(f"invalid value for {where}: expected a mapping for {cls.__name__}, got {_show(data)}")

    fields = _init_fields(cls)
    hints = _hints(cls)
    kwargs = {}
    for k, v in data.items():
        if not isinstance(k, str) or k not in fields:
            raise _unknown_key_error(k, prefix, fields)
        kwargs[k] = _convert(v, hints.get(k, Any), _join(prefix, k))

    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        raise ConfigError("missing required config key(s): " + ", ".join(f"'{_join(prefix, m)}'" for m in missing))
    return cls(**kwargs)


# --------------------------------------------------------------------------- to_dict


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def to_dict(obj) -> dict:
    """Dataclass instance -> plain nested dict (tuples become lists), safe_dump-able."""
    if isinstance(obj, type) or not (dataclasses.is_dataclass(obj) or isinstance(obj, Mapping)):
        raise TypeError(f"to_dict expects a dataclass instance, got {obj!r}")
    return _plain(obj)


# --------------------------------------------------------------------------- overrides


def _resolve_override_path(cls: type, parts: list[str], override: str) -> Any:
    """Validate a dotted key path against the schema; return the target type."""
    tp: Any = cls
    ctx = f" in override '{override}'"
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        inner, _ = _unwrap_optional(tp)
        if inner is Any or inner is object:
            return Any
        origin = typing.get_origin(inner)
        if _is_dataclass_type(inner):
            fields = _init_fields(inner)
            if part not in fields:
                raise _unknown_key_error(part, prefix, fields, ctx)
            tp = _hints(inner).get(part, Any)
        elif origin in (dict, Mapping) or inner in (dict, Mapping):
            args = typing.get_args(inner)
            tp = args[1] if len(args) == 2 else Any
        else:
            raise ConfigError(
                f"cannot set config key '{'.'.join(parts)}'{ctx}: '{prefix}' is of type "
                f"{_type_name(tp)}, not a section"
            )
    return tp


def _coerce(value: Any, raw: Any, tp: Any) -> Any:
    """Adjust a YAML-parsed override value towards type ``tp``.

    ``raw`` is the same value parsed with ``yaml.BaseLoader`` (all scalars strings),
    used to recover the literal text where the schema expects a string
    (``name=123``, ``languages=[en, no]``).
    """
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if inner is str and raw in ("", None) and not optional:
            return ""
        return None
    tp = inner
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
        return value
    if tp is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                try:
                    f = float(value)
                except ValueError:
                    return value
                return int(f) if f.is_integer() else value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value
    if tp is str:
        if not isinstance(value, str) and isinstance(raw, str):
            return raw
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Literal:
        if value not in args and isinstance(raw, str) and raw in args:
            return raw
        return value
    if origin in (list, tuple, set, frozenset) and isinstance(value, list):
        raws = raw if isinstance(raw, list) and len(raw) == len(value) else [None] * len(value)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                return value
            return [_coerce(v, r, a) for v, r, a in zip(value, raws, args)]
        elem = args[0] if args else Any
        return [_coerce(v, r, elem) for v, r in zip(value, raws)]
    if (origin in (dict, Mapping) or tp in (dict, Mapping)) and isinstance(value, dict):
        vtp = args[1] if len(args) == 2 else Any
        raws = raw if isinstance(raw, dict) else {}
        return {k: _coerce(v, raws.get(str(k)), vtp) for k, v in value.items()}
    if _is_dataclass_type(tp) and isinstance(value, dict):
        hints = _hints(tp)
        raws = raw if isinstance(raw, dict) else {}
        return {
            k: (_coerce(v, raws.get(str(k)), hints[k]) if isinstance(k, str) and k in hints else v)
            for k, v in value.items()
        }
    return value


def _deep_merge(base: dict, new: Mapping) -> dict:
    out = dict(base)
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: Mapping | None, overrides: Iterable[str], cls) -> dict:
    """Apply dotted ``key=value`` overrides to a nested config dict; return a new dict.

    Each key path is validated against the schema ``cls`` before anything is applied
    (unknown key -> :class:`ConfigError` with the closest valid key).  Values are
    parsed with ``yaml.safe_load`` and coerced towards the target field type
    (``lr=3e-4`` -> float, ``steps=1e5`` -> int, ``name=123`` -> str), then type
    checked.  Setting a dataclass-typed section to a mapping merges it into the
    existing section; other fields (including dict-typed ones) are replaced.
    Keys inside dict-typed (or ``Any``) fields may be addressed with further dots.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    out = copy.deepcopy(dict(data)) if data else {}
    for ov in overrides:
        if not isinstance(ov, str) or "=" not in ov:
            raise ConfigError(f"malformed override {ov!r}: expected 'dotted.key=value'")
        key, text = ov.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            raise ConfigError(f"malformed override {ov!r}: expected 'dotted.key=value'")
        tp = _resolve_override_path(cls, parts, ov)
        try:
            value = yaml.safe_load(text)
            raw = yaml.load(text, Loader=yaml.BaseLoader)
        except yaml.YAMLError as e:
            raise ConfigError(f"cannot parse value of override '{ov}' for config key '{key}': {e}") from None
        value = _coerce(value, raw, tp)

        # walk / create the containers
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                if isinstance(child, Mapping):
                    child = node[part] = dict(child)
                else:
                    raise ConfigError(
                        f"cannot apply override '{ov}': config key '{'.'.join(parts[: i + 1])}' "
                        f"holds {_show(child)}, not a mapping"
                    )
            node = child
        last = parts[-1]
        inner, _ = _unwrap_optional(tp)
        if _is_dataclass_type(inner) and isinstance(value, Mapping) and isinstance(node.get(last), Mapping):
            value = _deep_merge(dict(node[last]), value)
        try:
            _convert(value, tp, key)
        except ConfigError as e:
            raise ConfigError(f"{e} (from override '{ov}')") from None
        node[last] = value
    return out


# --------------------------------------------------------------------------- load / save


def validate_config(obj) -> None:
    """Call ``validate()`` on ``obj`` and every nested dataclass (children first)."""
    _validate(obj, set())


def _validate(value: Any, seen: set) -> None:
    if id(value) in seen:
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        seen.add(id(value))
        for f in dataclasses.fields(value):
            _validate(getattr(value, f.name), seen)
        hook = getattr(value, "validate", None)
        if callable(hook):
            hook()
    elif isinstance(value, Mapping):
        seen.add(id(value))
        for v in value.values():
            _validate(v, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        seen.add(id(value))
        for v in value:
            _validate(v, seen)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: '{path}'") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory, not a file: '{path}'") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file '{path}': {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in config file '{path}': {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must contain a mapping at top level, got {_show(data)}")
    return data


def load_config(cls, path: str | os.PathLike | None = None, overrides: Iterable[str] = (), base: Mapping | None = None):
    """Load a config: ``base`` dict <- YAML file (deep-merged) <- overrides -> instance.

    After construction, ``validate(self)`` methods of the dataclass and all nested
    dataclasses are called (children first).
    """
    data: dict = copy.deepcopy(dict(base)) if base else {}
    if path is not None:
        data = _deep_merge(data, _read_yaml(os.fspath(path)))
    data = apply_overrides(data, overrides, cls)
    obj = from_dict(cls, data)
    validate_config(obj)
    return obj


def save_config(obj, path: str | os.PathLike) -> None:
    """Write ``to_dict(obj)`` as YAML to ``path`` atomically (tmp file + ``os.replace``)."""
    path = os.fspath(path)
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, allow_unicode=True, default_flow_style=False)
    atomic_write_text(path, text)
