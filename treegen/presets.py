"""Strategy presets: TOML files in strategies/ that set a strategy and its generation settings.

``--strategy`` takes a built-in strategy name, a preset name (``strategies/<name>.toml``) or a
preset path. A preset names its strategy with ``strategy = "tree"``; its other keys are
defaults for the run flags (k, temperature, top_p, max_output_tokens, branching, chains,
max_depth, embedder, near_dup), which flags given on the command line override.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import treegen
from treegen.errors import ConfigError
from treegen.strategies import STRATEGIES

PRESET_KEYS: dict[str, Any] = {
    "strategy": str, "description": str, "k": int, "temperature": (int, float), "top_p": (int, float),
    "max_output_tokens": int, "branching": int, "chains": int, "max_depth": int, "embedder": str,
    "near_dup": (int, float),
}


def preset_dirs() -> list[Path]:
    """./strategies (the user's, or the repository's editable copy), then the shipped defaults."""
    return [Path.cwd() / "strategies", Path(treegen.__file__).resolve().parent / "defaults" / "strategies"]


def list_presets() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in preset_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def resolve_strategy(name_or_path: str) -> dict[str, Any]:
    """The preset settings for ``--strategy`` (always with a ``strategy`` key)."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or len(p.parts) > 1:
        if not p.is_file():
            raise ConfigError(f"Strategy preset {name_or_path} does not exist. Give a TOML file or one of: "
                              f"{', '.join(sorted(set(STRATEGIES) | set(list_presets())))}.")
        path = p
    else:
        found = list_presets().get(name_or_path)
        if found is None:
            if name_or_path in STRATEGIES:
                return {"strategy": name_or_path}
            raise ConfigError(
                f"Unknown strategy {name_or_path!r}. Choose one of: "
                f"{', '.join(sorted(set(STRATEGIES) | set(list_presets())))}, or give the path of a preset TOML file."
            )
        path = found
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc}). Fix the syntax, e.g. k = 5") from None
    for key, value in data.items():
        if key not in PRESET_KEYS:
            raise ConfigError(f"{path}: unknown key {key!r}. Known keys: {', '.join(PRESET_KEYS)}.")
        if not isinstance(value, PRESET_KEYS[key]) or isinstance(value, bool):
            raise ConfigError(f"{path}: {key} = {value!r} has the wrong type.")
    strategy = data.get("strategy", path.stem)
    if strategy not in STRATEGIES:
        raise ConfigError(f"{path}: strategy {strategy!r} is not one of {', '.join(STRATEGIES)}.")
    data["strategy"] = strategy
    data.pop("description", None)
    return data
