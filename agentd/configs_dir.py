"""Where the shipped configs are: ``configs/local`` (the demo network) and ``configs/sims``.

In the repository ``agentd/configs`` links to the top-level ``configs/``; a wheel carries the
files themselves as package data, so the demo and the sample scenarios work after
``pip install``.
"""

from __future__ import annotations

from pathlib import Path


def configs_dir() -> Path:
    return Path(__file__).resolve().parent / "configs"


def scenario_path(name: str) -> Path:
    """A scenario as given, or else the shipped one it names (``ring``, ``ring.toml`` or
    ``configs/sims/ring.toml`` from outside the repository). Any other path is taken as
    given: a mistyped path to an edited copy must not run the stock scenario of its name."""
    given = Path(name)
    if given.exists() or (len(given.parts) > 1 and given.parts[-3:-1] != ("configs", "sims")):
        return given
    shipped = configs_dir() / "sims" / given.name
    if shipped.suffix != ".toml":
        shipped = shipped.with_name(shipped.name + ".toml")
    return shipped if shipped.exists() else given


def shipped_scenarios() -> list[str]:
    """The names ``agentd sim NAME`` finds in the installed package."""
    return sorted(path.stem for path in (configs_dir() / "sims").glob("*.toml"))
