"""The error family: every exception class tickerplant defines is a TickerplantError, under the
one class that says who is at fault, and no two share a name."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tickerplant
from tickerplant import errors

FAULTS = (errors.ConfigError, errors.InputError, errors.RemoteError, errors.LocalProtocolError)


def defined() -> dict[str, list[type[BaseException]]]:
    """Every exception class defined in a module of the package, by name."""
    found: dict[str, list[type[BaseException]]] = {}
    for info in pkgutil.walk_packages(tickerplant.__path__, "tickerplant."):
        if info.name.endswith("__main__"):
            continue  # the command line itself: importing it runs it
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if (inspect.isclass(value) and issubclass(value, BaseException)
                    and value.__module__ == info.name):  # fmt: skip
                found.setdefault(name, []).append(value)
    return found


def test_every_error_is_one_of_the_family_by_who_is_at_fault() -> None:
    classes = defined()
    assert {"MalformedPacket", "SubscribeError", "ReplayError", "ItchFileError"} <= set(classes)
    for name, found in classes.items():
        assert len(found) == 1, f"{name} is defined in {len(found)} modules"
        (cls,) = found
        if cls is errors.TickerplantError:
            continue
        at_fault = [fault for fault in FAULTS if issubclass(cls, fault)]
        assert issubclass(cls, errors.TickerplantError), f"{name} is outside the family"
        assert cls in FAULTS or len(at_fault) == 1, f"{name}: who is at fault? {at_fault}"


def test_the_users_and_the_inputs_errors_are_value_errors_and_ours_a_runtime_error() -> None:
    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.InputError, ValueError)
    assert issubclass(errors.LocalProtocolError, RuntimeError)
    assert not issubclass(errors.RemoteError, ValueError)
