"""One strict reader for every environment setting (the backend's and the LLM's).

A value that does not parse is an error naming the variable and what it accepts: a typo such as
``ALLABEL_LLM_BATCH=ture`` must not silently mean false. An unset or empty variable is the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


class SettingError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def _raw(name: str, env: Mapping[str, str] | None) -> str | None:
    value = (os.environ if env is None else env).get(name)
    return None if value is None or not value.strip() else value.strip()


def text(name: str, default: str | None = None, env: Mapping[str, str] | None = None) -> str | None:
    value = _raw(name, env)
    return default if value is None else value


def flag(name: str, default: bool, env: Mapping[str, str] | None = None) -> bool:
    value = _raw(name, env)
    if value is None:
        return default
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise SettingError(f"{name} must be 1 or 0 (true/false, yes/no, on/off), got {value!r}")


def choice(
    name: str, options: Sequence[str], default: str, env: Mapping[str, str] | None = None
) -> str:
    value = _raw(name, env)
    if value is None:
        return default
    if value.lower() not in options:
        raise SettingError(f"{name} must be one of {', '.join(options)}, got {value!r}")
    return value.lower()


def number(
    name: str,
    default: float | None,
    env: Mapping[str, str] | None = None,
    *,
    minimum: float | None = None,
    above: float | None = None,
    integer: bool = False,
    unit: str = "",
) -> float | int | None:
    """A number (``integer``: a whole one), at least ``minimum`` / greater than ``above``."""
    value = _raw(name, env)
    if value is None:
        return default
    kind = "a whole number" if integer else "a number"
    try:
        parsed = int(value) if integer else float(value)
    except ValueError:
        raise SettingError(f"{name} must be {kind}{unit}, got {value!r}") from None
    if minimum is not None and parsed < minimum:
        raise SettingError(f"{name} must be {kind} >= {minimum:g}{unit}, got {value!r}")
    if above is not None and parsed <= above:
        raise SettingError(f"{name} must be {kind} > {above:g}{unit}, got {value!r}")
    return parsed


def fraction(
    name: str, default: float | None, env: Mapping[str, str] | None = None
) -> float | None:
    """A number in [0, 1], written 0.6 or 60%."""
    value = _raw(name, env)
    if value is None:
        return default
    try:
        parsed = float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        parsed = -1.0
    if not 0 <= parsed <= 1:
        raise SettingError(f"{name} must be a fraction in [0, 1] (0.6 or 60%), got {value!r}")
    return parsed
