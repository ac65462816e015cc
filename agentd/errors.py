"""Errors a person sees: each names what is wrong and where."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input or environment (bad config, port in use, ...).

    The CLI prints it as one line and exits 2, without a traceback.
    """


class NotRunning(UserError):
    """No node answers at a control socket (none there, or a killed node's file)."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean a, b?)`` naming the known names closest to a mistyped ``name`` (its
    misspellings, and names of the same dotted family), or "" when none is close."""
    known = sorted(known)
    by_case = {k.lower(): k for k in known}  # GETINFO is getinfo
    if name.lower() in by_case:  # only the case is wrong: that name, and no other
        return f" (did you mean {by_case[name.lower()]}?)"
    members = [k for k in known if k.lower().startswith(name.lower() + ".")]
    if members:  # a family's name alone (ch, lift): its methods, all of them
        return f" (did you mean one of {', '.join(members)}?)"
    close = [by_case[k] for k in difflib.get_close_matches(name.lower(), by_case, n=3,
                                                            cutoff=0.6)]
    family = name.split(".")[0] + "."
    close += [k for k in known if "." in name and k.startswith(family) and k not in close]
    return f" (did you mean {', '.join(close[:5])}?)" if close else ""
