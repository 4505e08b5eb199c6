"""Budget profiles: named TOML presets of caps (budgets/<name>.toml), validated on load."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from treegen.errors import ConfigError
from treegen.prices import budget_dirs

# key -> (accepted types, what to write); max_usd is dollars, the rest counts or seconds.
PROFILE_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "max_usd": ((int, float), "dollars, e.g. 0.50"),
    "max_tokens": ((int,), "a whole number of tokens, e.g. 200000"),
    "max_calls": ((int,), "a whole number of calls, e.g. 100"),
    "target": ((int,), "a whole number of accepted examples, e.g. 500"),
    "max_depth": ((int,), "a whole number of tree levels, e.g. 5"),
    "max_seconds": ((int, float), "seconds, e.g. 600"),
}


def list_budget_profiles() -> dict[str, Path]:
    """Profile name -> file, over ./budgets and the repository's budgets (the first wins)."""
    found: dict[str, Path] = {}
    for d in budget_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def find_budget_profile(name_or_path: str) -> Path:
    """A profile given by name ("smoke") or path ("my/caps.toml")."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or len(p.parts) > 1:
        if p.is_file():
            return p
        raise ConfigError(f"Budget profile {name_or_path} does not exist. Give the path of a TOML file, or a preset name.")
    profiles = list_budget_profiles()
    if name_or_path in profiles:
        return profiles[name_or_path]
    names = ", ".join(sorted(profiles)) or "none found"
    raise ConfigError(f"Unknown budget profile {name_or_path!r}. Available: {names}; or give the path of a TOML file.")


def load_budget_profile(name_or_path: str) -> dict[str, Any]:
    """The caps of a profile, validated: only known keys, non-negative numbers of the right kind.

    A ``description`` string is allowed for people and left out of the result.
    """
    path = find_budget_profile(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}). Fix the syntax, e.g. max_usd = 0.50") from None
    description = data.pop("description", None)
    if description is not None and not isinstance(description, str):
        raise ConfigError(f"{path}: description must be a string.")
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {', '.join(unknown)}. Allowed: {', '.join(PROFILE_KEYS)} (and description)."
        )
    caps: dict[str, Any] = {}
    for key, value in data.items():
        types, what = PROFILE_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigError(f"{path}: {key} = {value!r} is not valid. Write {what}.")
        if value < 0:  # type: ignore[operator]
            raise ConfigError(f"{path}: {key} = {value!r} is negative. Write {what}.")
        caps[key] = value
    if not caps:
        raise ConfigError(f"{path}: the profile sets no cap. Add at least one of {', '.join(PROFILE_KEYS)}.")
    return caps


def profile_description(path: Path) -> str:
    """The description line of a profile file, '' if none or unreadable (for listings)."""
    try:
        value = tomllib.loads(path.read_text(encoding="utf-8")).get("description", "")
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    return value if isinstance(value, str) else ""
