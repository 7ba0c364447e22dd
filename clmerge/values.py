"""Value checks shared by the configuration and the method registry: turning what a user
wrote (often a string from the command line) into a typed value, and describing a bad
value in one short sentence."""

from __future__ import annotations

import math
from typing import Any

from clmerge.errors import ConfigError


def short(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages.

    Containers are summarised before they are printed, so a value that is huge once
    expanded (a YAML file of nested aliases) costs nothing to describe.
    """
    if isinstance(value, (dict, list, tuple, set)):
        kind = type(value).__name__
        text = f"a {kind} of {len(value)} item{'s' if len(value) != 1 else ''}"
        if len(value) <= 8 and all(isinstance(v, (str, int, float, bool, type(None)))
                                   for v in (value.values() if isinstance(value, dict) else value)):
            text = repr(value) if len(repr(value)) <= limit else text
        return text
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit])
    return text if len(text) <= limit + 2 else text[: limit - 3] + "..." + text[-1:]


BOOL_WORDS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def parse_bool(name: str, value: Any) -> bool:
    """A bool option's value: a bool, 0/1, or one of true/false/1/0/yes/no (any case)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return BOOL_WORDS[value.strip().lower()]
    raise ConfigError(f"{name} expects true or false (also 1/0, yes/no); got {short(value)}")


def _article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


OPTION_INT_LIMIT = 2**31 - 1


def coerce_option(name: str, default: Any, value: Any, *,
                  int_limit: int | None = OPTION_INT_LIMIT) -> Any:
    """``value`` (a method option's or a setting's, named ``name`` in messages) converted
    to the type of its ``default``: bools as :func:`parse_bool`, numbers finite (ints
    integral and, unless ``int_limit`` is None, at most ``int_limit`` in size), strings
    as given (a number is taken as its text); any other type must match. Ranges are the
    caller's: an option's Options class, a setting's field metadata.
    """
    wrong = ConfigError(f"{name} expects {_article(type(default).__name__)}, got {short(value)}")
    if isinstance(default, bool):
        return parse_bool(name, value)
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise wrong
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise wrong from None
        if isinstance(value, str) and isinstance(default, int) and \
                value.strip().lstrip("+-").isdigit():
            number = int(value)
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{name} must be a finite number; got {short(value)}")
        if isinstance(default, int):
            if isinstance(number, float) and not number.is_integer():
                raise wrong
            number = int(number)
            if int_limit is not None and abs(number) > int_limit:
                raise ConfigError(f"{name} must be at most {int_limit} in size; "
                                  f"got {short(value)}")
            return number
        return float(number)
    if isinstance(default, str):
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise wrong
        return str(value)
    if default is not None and not isinstance(value, type(default)):
        raise wrong
    return value
