"""Model prices and the cost arithmetic: pure functions on integer micro-dollars.

Prices are stored as micro-dollars per 1M tokens, so $0.15 per 1M tokens is ``150_000`` and a
call's cost is an exact integer division, rounded up: a cap never lets through the fraction
of a micro-dollar that float arithmetic would drop.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

import treegen
from treegen.errors import ConfigError, UnknownModelPriceError

PER_TOKENS = 1_000_000  # prices are quoted per 1M tokens
MICRO = 1_000_000  # micro-dollars per dollar
PRICE_FIELDS = ("input", "cached_input", "output", "batch_input", "batch_output")

# A dated snapshot suffix: "-2024-07-18" (new style) or "-0125" (old style), maybe followed
# by more ("-1106-preview"). Only these fall back to the undated family's price: a name like
# "gpt-4o-audio-preview" is a different product with a different price.
_SNAPSHOT = re.compile(r"^-(\d{4}-\d{2}-\d{2}|\d{4})(-[a-z0-9.-]+)?$")


@dataclass(frozen=True)
class ModelPrice:
    model: str
    input: int  # micro-dollars per 1M input tokens ($0.15/1M -> 150_000)
    cached_input: int
    output: int
    batch_input: int
    batch_output: int


DEFAULTS_DIR = Path(treegen.__file__).resolve().parent / "defaults"  # shipped inside the package
DEFAULT_PRICE_TABLE = "openai"


def budget_dirs() -> list[Path]:
    """Where budget profiles (and, in ``prices/``, price tables) are looked up: ./budgets, then
    the defaults shipped with treegen (the repository's top-level budgets/ is their editable copy)."""
    dirs = [Path.cwd() / "budgets", DEFAULTS_DIR / "budgets"]
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def find_prices_file(name_or_path: str | None) -> Path:
    """A price table given by name ("openai", looked up in budgets/prices/) or path."""
    name_or_path = name_or_path or DEFAULT_PRICE_TABLE
    p = Path(name_or_path)
    if p.suffix == ".toml" or len(p.parts) > 1 or p.is_file():
        if p.is_file():
            return p
        raise ConfigError(f"Price table {name_or_path} does not exist. Give the path of a TOML price table, e.g. budgets/prices/openai.toml.")
    for d in budget_dirs():
        candidate = d / "prices" / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    where = " or ".join(str(d) for d in budget_dirs())
    raise ConfigError(f"No price table named {name_or_path!r} in {where} (prices/ below each). Give a path to a TOML price table, or use the default {DEFAULT_PRICE_TABLE!r}.")


def _dollars_to_micro(value: object, where: str) -> int:
    """Exact conversion of a dollar figure (as written in TOML or on the command line)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise ConfigError(f"{where}: expected a number of dollars, got {value!r}. Write e.g. 0.15.")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{where}: {value!r} is not a number. Write dollars per 1M tokens, e.g. 0.15.") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{where}: {value!r} must be a non-negative number of dollars, e.g. 0.15.")
    micro = d * MICRO
    if micro != micro.to_integral_value():
        raise ConfigError(f"{where}: {value!r} is finer than one micro-dollar per 1M tokens. Round it to 6 decimals.")
    return int(micro)


def usd_to_micro(value: float | int | str | Decimal) -> int:
    """Dollars (e.g. a --max-usd value) to integer micro-dollars, exactly, rounded down."""
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConfigError(f"{value!r} is not an amount of dollars. Write e.g. 0.50.") from None
    if not d.is_finite() or d < 0:
        raise ConfigError(f"{value!r} must be a non-negative amount of dollars, e.g. 0.50.")
    return int(d * MICRO)  # int() truncates: a cap rounds down, never up


def _half_up(micro: int) -> int:
    return -(-micro // 2)


def _price_from_mapping(model: str, fields: dict[str, object], where: str) -> ModelPrice:
    unknown = sorted(set(fields) - set(PRICE_FIELDS))
    if unknown:
        raise ConfigError(f"{where}: unknown price field(s) {', '.join(unknown)}. Allowed: {', '.join(PRICE_FIELDS)}.")
    for need in ("input", "output"):
        if need not in fields:
            raise ConfigError(f"{where}: missing {need!r}. Give at least input and output in dollars per 1M tokens.")
    v = {k: _dollars_to_micro(val, f"{where}.{k}") for k, val in fields.items()}
    # Without prompt caching the cached rate is the list rate; Batch is 50% of list.
    v.setdefault("cached_input", v["input"])
    v.setdefault("batch_input", _half_up(v["input"]))
    v.setdefault("batch_output", _half_up(v["output"]))
    return ModelPrice(model=model, **v)  # type: ignore[arg-type]


def load_price_table(path: str | Path | None = None) -> dict[str, ModelPrice]:
    """Read a TOML price table: one ``[models."name"]`` table per model, dollars per 1M tokens."""
    p = find_prices_file(str(path) if path is not None else None)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"), parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc}). Fix the syntax.") from None
    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError(f'{p}: no [models."<name>"] tables. Add one per model with input and output prices.')
    table: dict[str, ModelPrice] = {}
    for name, fields in models.items():
        if not isinstance(fields, dict):
            raise ConfigError(f"{p}: models.{name} must be a table of prices.")
        table[name.lower()] = _price_from_mapping(name.lower(), fields, f"{p}: models.{name}")
    return table


def price_for(model: str, table: dict[str, ModelPrice]) -> ModelPrice | None:
    """The price of ``model``: exact name, else the family of a dated snapshot (longest wins)."""
    m = model.strip().lower()
    if m.startswith("openai/"):
        m = m[len("openai/"):]
    if m in table:
        return table[m]
    best: str | None = None
    for name in table:
        if m.startswith(name) and _SNAPSHOT.match(m[len(name):]):
            if best is None or len(name) > len(best):
                best = name
    return replace(table[best], model=model) if best else None


def parse_price_override(text: str, model: str = "custom") -> ModelPrice:
    """Parse ``--prices input=0.15,output=0.60[,cached_input=..]`` (dollars per 1M tokens)."""
    fields: dict[str, object] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or not value.strip():
            raise ConfigError(
                f"--prices: {part.strip()!r} is not key=value. Write e.g. --prices input=0.15,output=0.60 (dollars per 1M tokens)."
            )
        if key in fields:
            raise ConfigError(f"--prices: {key} is given twice. Give each price once.")
        fields[key] = value.strip()
    return _price_from_mapping(model, fields, "--prices")


def require_price(model: str, table: dict[str, ModelPrice], overrides: ModelPrice | str | None = None) -> ModelPrice:
    """The price to cap ``model`` with: the override if given, else the table; else a clear error."""
    if overrides is not None:
        price = parse_price_override(overrides, model) if isinstance(overrides, str) else overrides
        return replace(price, model=model)
    known = price_for(model, table)
    if known is None:
        raise UnknownModelPriceError(
            f"No price known for model {model!r}. A dollar cap needs prices: pass --prices "
            "input=0.20,output=0.60 (dollars per 1M tokens), add the model to budgets/prices/openai.toml, "
            "or cap with --max-tokens / --max-calls instead."
        )
    return known


def _ceil_div(num: int, den: int) -> int:
    return -(-num // den)


def cost_micro(price: ModelPrice, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, batch: bool = False) -> int:
    """Cost of one call in micro-dollars, rounded up.

    ``prompt_tokens`` includes ``cached_tokens`` (as OpenAI reports usage). With ``batch`` the
    Batch rates apply, and cached input is billed at half the cached rate, as OpenAI lists it.
    """
    if min(prompt_tokens, completion_tokens, cached_tokens) < 0:
        raise ValueError("token counts must be non-negative")
    cached = min(cached_tokens, prompt_tokens)  # a server never caches more than it was sent
    uncached = prompt_tokens - cached
    if batch:
        # Doubled numerator keeps the half-rate on cached input exact.
        num = 2 * (uncached * price.batch_input + completion_tokens * price.batch_output) + cached * price.cached_input
        return _ceil_div(num, 2 * PER_TOKENS)
    num = uncached * price.input + cached * price.cached_input + completion_tokens * price.output
    return _ceil_div(num, PER_TOKENS)


def worst_case_micro(price: ModelPrice, prompt_tokens: int, max_tokens: int) -> int:
    """Upper bound on a call's cost: every input token at list price and max_tokens of output."""
    if min(prompt_tokens, max_tokens) < 0:
        raise ValueError("token counts must be non-negative")
    return _ceil_div(prompt_tokens * price.input + max_tokens * price.output, PER_TOKENS)


def format_usd(micro: int | None) -> str:
    """Display only: "$0.0123", "$0.00298", "$12.35": three significant digits below $1 (up to 6 decimals)."""
    if micro is None:
        return "n/a"
    sign = "-" if micro < 0 else ""
    m = abs(int(micro))
    if m == 0:
        return "$0.00"
    if m >= MICRO:
        return f"{sign}${Decimal(m) / MICRO:,.2f}"
    decimals = 4
    while decimals < 6 and m < 10 ** (8 - decimals):  # three significant digits
        decimals += 1
    text = f"{Decimal(m) / MICRO:.{decimals}f}"
    head, _, tail = text.partition(".")
    tail = tail.rstrip("0").ljust(2, "0")
    return f"{sign}${head}.{tail}"
