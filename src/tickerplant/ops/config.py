"""One config vocabulary: :class:`ConfigError`, defaults read off the dataclasses, and TOML.

Every setting lives in a frozen dataclass beside the machine it configures, with its default
there and nowhere else; the command line takes its defaults from :func:`default`, and
``tickerplant run`` reads TOML into the same dataclasses with :func:`load`. Whoever finds a bad
value raises :class:`ConfigError` naming the field and the fix; the loader prefixes the path of
the table it was in, so the user reads ``feed.recovery.give_up_after`` rather than a traceback.

This module imports only the standard library, so that every layer's config dataclasses can
raise its error (the layer table in docs/ARCHITECTURE.md counts it as a base module).
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tickerplant.errors import ConfigError

T = TypeVar("T")


def check(field: str, ok: bool, value: object, fix: str) -> None:
    """Raise :class:`ConfigError` for ``field`` unless ``ok``: the one-line validation."""
    if not ok:
        raise ConfigError(field, f"{value!r} is not allowed", fix)


def default(cls: type[Any], name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``: where a CLI flag takes its default."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise LookupError(f"{cls.__name__}.{name} has no default")
    raise LookupError(f"{cls.__name__} has no field {name!r}")


Parser = Callable[[Any, str], Any]


def load(cls: type[T], table: Mapping[str, Any], path: str = "", parsers: Mapping[type, Parser]
         | None = None) -> T:
    """Build dataclass ``cls`` from a TOML table, nested tables into nested dataclasses.

    Unknown keys and values of the wrong type are refused with the field's path; fields left out
    keep their defaults. ``parsers`` turn TOML values into types TOML lacks (an ``Endpoint`` from
    ``"host:port"``), each called as ``parser(value, path)``.
    """
    parsers = parsers or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, raw in table.items():
        where = f"{path}.{key}" if path else key
        if key not in fields:
            moved = getattr(cls, "MOVED", {}).get(key)
            if moved is not None:  # a key from an older config: say where it went
                raise ConfigError(where, "has moved", f"set {moved} instead")
            known = ", ".join(sorted(fields))
            raise ConfigError(where, "is not a setting", f"use one of: {known}")
        values[key] = _convert(hints[key], raw, where, parsers)
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in values:
            where = f"{path}.{name}" if path else name
            raise ConfigError(where, "is missing", "set it: it has no default")
    try:
        return cls(**values)
    except ConfigError as err:
        raise err.within(path) from None


def load_file(cls: type[T], file: Path, parsers: Mapping[type, Parser] | None = None) -> T:
    """:func:`load` from a TOML file; a file that is not TOML names its line and column."""
    try:
        with file.open("rb") as f:
            table = tomllib.load(f)
    except OSError as err:
        raise ConfigError(
            str(file), f"cannot be read ({err.strerror})", "give a readable file"
        ) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(file), f"is not TOML: {err}", "fix the syntax there") from None
    except UnicodeDecodeError as err:  # (found by fuzz/config.py: TOML is UTF-8)
        raise ConfigError(str(file), f"is not UTF-8 text: byte {err.start} is "
                          f"{err.object[err.start]:#04x}", "save it as UTF-8") from None
    return load(cls, table, "", parsers)


def _convert(hint: Any, raw: Any, where: str, parsers: Mapping[type, Parser]) -> Any:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if raw is None or (isinstance(raw, str) and raw == "" and type(None) in options):
        return None
    for option in options:
        if option is type(None):
            continue
        if option in parsers:
            return parsers[option](raw, where)
        if dataclasses.is_dataclass(option):
            if not isinstance(raw, Mapping):
                raise ConfigError(where, f"{raw!r} is not a table", f"write it as [{where}]")
            return load(option, raw, where, parsers)  # type: ignore[arg-type]
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if origin is Path and isinstance(raw, str):
            return Path(raw)
        if origin is tuple and isinstance(raw, list):
            return tuple(raw)
        if isinstance(origin, type) and isinstance(raw, origin) and not (
            origin is int and isinstance(raw, bool)
        ):
            return raw
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise ConfigError(where, f"{raw!r} is not a {names}", f"give a {names}")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def example(
    cls: type[Any], scalars: tuple[type, ...] = (), instance: Any = None, table: str = ""
) -> str:
    """TOML for every field of dataclass ``cls`` at its default (or ``instance``'s values),
    nested dataclasses as tables, each line commented with its type; what :func:`load` reads
    back. ``scalars`` are dataclasses written as strings (what ``load``'s parsers read, such as
    an ``Endpoint``). A field that is None by default is shown commented out."""
    instance = instance if instance is not None else cls()
    hints = typing.get_type_hints(cls)
    lines: list[str] = []
    nested: list[str] = []
    for f in dataclasses.fields(cls):
        value = getattr(instance, f.name)
        kind = _type_name(hints[f.name])
        if dataclasses.is_dataclass(value) and not isinstance(value, scalars):
            where = f"{table}.{f.name}" if table else f.name
            nested.append(f"\n[{where}]\n" + example(type(value), scalars, value, where))
        elif value is None:
            lines.append(f"# {f.name} =  # {kind}, unset")
        else:
            lines.append(f"{f.name} = {_toml(value)}  # {kind}")
    return "\n".join(lines) + "".join(nested) + ("\n" if not table else "")


def _toml(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _type_name(hint: Any) -> str:
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    return " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
