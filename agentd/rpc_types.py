"""What each RPC param must be, read from its method's type hints.

A JSON value of the wrong type (a list where text goes, ``true`` where a number goes) is the
caller's mistake: it gets -32602 naming the param and what it must be before the method
runs, so no method has to guard every param's type itself and none can fail on one with an
internal error. Ranges and formats stay with the methods, which know them.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from typing import Any


def _text(value: Any) -> bool:
    """Text that can be stored and sent: UTF-8, so no lone surrogate (JSON's "\\ud800")."""
    if not isinstance(value, str):
        return False
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


# a hint's name -> (the check, how an error names it)
_KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (_text, "text"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "None": (lambda v: v is None, "null"),
    "dict": (lambda v: isinstance(v, dict), "an object"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "list[str]": (lambda v: isinstance(v, list) and all(_text(x) for x in v),
                  "a list of text"),
    "list[int]": (lambda v: isinstance(v, list) and all(
        isinstance(x, int) and not isinstance(x, bool) for x in v), "a list of integers"),
}
Check = tuple[tuple[Callable[[Any], bool], ...], str]


@functools.cache
def _check(hint: str) -> Check | None:
    """The checks of a hint such as ``str | list[str] | None``, or None to take anything
    (``Any``, or a hint this table does not know)."""
    kinds = [_KINDS.get(part.strip()) for part in hint.split("|")]
    if any(kind is None for kind in kinds):
        return None
    return tuple(check for check, _ in kinds), " or ".join(name for _, name in kinds)


def accepts(hint: str, value: Any) -> bool | None:
    """Whether a param with the hint ``hint`` takes ``value``; None when the hint takes
    anything (or is one this table does not know)."""
    checked = _check(hint)
    return None if checked is None else any(check(value) for check in checked[0])


def check_params(method: str, signature: inspect.Signature, params: dict[str, Any]) -> str | None:
    """Why ``params`` do not fit ``signature``'s hints (the first misfit), or None."""
    for name, value in params.items():
        hint = signature.parameters[name].annotation
        checked = _check(hint) if isinstance(hint, str) else None
        if checked is not None and not any(check(value) for check in checked[0]):
            return f"{method}: {name} must be {checked[1]}, not {shown(value)}{_whole(value)}"
    return None


def _whole(value: Any) -> str:
    """What to write instead of a whole number that JSON read as a fraction (``1e3``,
    ``500.0``): the caller meant the integer, which the message names."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return f" (a number with a fraction or an exponent: write {int(value)})"
    return ""


def shown(value: Any, longest: int = 60) -> str:
    """A param's value as the caller wrote it (JSON), cut short: an error echoes what was
    wrong, never a megabyte of it."""
    text = json.dumps(value, ensure_ascii=True, default=repr)  # in-process callers: any value
    return text if len(text) <= longest else text[:longest - 3] + "..."
