"""Prices, the cost arithmetic and budget profiles."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from treegen.errors import ConfigError, UnknownModelPriceError
from treegen.prices import (
    ModelPrice,
    cost_micro,
    find_prices_file,
    format_usd,
    load_price_table,
    parse_price_override,
    price_for,
    require_price,
    usd_to_micro,
    worst_case_micro,
)
from treegen.profiles import list_budget_profiles, load_budget_profile

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def table() -> dict[str, ModelPrice]:
    return load_price_table()


def test_cost_by_hand_gpt_4o_mini(table):
    p = table["gpt-4o-mini"]
    assert (p.input, p.cached_input, p.output) == (150_000, 75_000, 600_000)
    # 1,000 * $0.15/1M + 500 * $0.60/1M = 150 + 300 micro-dollars
    assert cost_micro(p, 1000, 500) == 450
    # 200 of the 1,200 prompt tokens cached: 1000*0.15 + 200*0.075 + 400*0.60 = 150 + 15 + 240
    assert cost_micro(p, 1200, 400, cached_tokens=200) == 405
    # Batch halves both rates; cached input in a batch is half the cached rate (7.5 -> exact).
    assert cost_micro(p, 1000, 500, batch=True) == 225
    assert cost_micro(p, 1000, 500, cached_tokens=200, batch=True) == 218  # 60 + 7.5 + 150 = 217.5, up
    assert worst_case_micro(p, 1000, 2000) == 150 + 1200


def test_cost_rounds_up_and_is_exact(table):
    p = table["gpt-4o-mini"]
    assert cost_micro(p, 0, 0) == 0
    assert cost_micro(p, 1, 0) == 1  # 0.15 micro is still charged as 1
    assert cost_micro(p, 7, 0) == 2  # 1.05 -> 2
    assert cost_micro(p, 20, 0) == 3  # exactly 3.0 stays 3
    # Large counts stay exact integers (a float would drift in the last digits).
    n = 10**12 + 1
    assert cost_micro(p, n, n) == -(-(n * 150_000 + n * 600_000) // 10**6)
    assert cost_micro(p, 100, 10, cached_tokens=500) == cost_micro(p, 100, 10, cached_tokens=100)
    with pytest.raises(ValueError):
        cost_micro(p, -1, 0)


def test_table_covers_current_models_and_batch_is_half(table):
    for name in ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
                 "gpt-4o", "gpt-4o-mini", "o3", "o4-mini", "o3-mini", "gpt-3.5-turbo"):
        p = table[name]
        assert p.output >= p.input > 0
        assert p.cached_input <= p.input
        assert (p.batch_input, p.batch_output) == (p.input // 2, p.output // 2)
    header = (REPO / "budgets" / "prices" / "openai.toml").read_text()[:1500].lower()
    assert "2025" in header and "verify" in header and "openai" in header


def test_snapshot_names_match_their_family(table):
    assert price_for("gpt-4o-mini-2024-07-18", table).input == 150_000
    assert price_for("gpt-4o-2024-08-06", table).input == 2_500_000
    assert price_for("gpt-4o-2024-05-13", table).input == 5_000_000  # listed: exact wins over family
    assert price_for("gpt-3.5-turbo-0125", table).output == 1_500_000
    assert price_for("gpt-3.5-turbo-0613", table).input == 1_500_000
    assert price_for("o3-mini-2025-01-31", table).input == 1_100_000
    assert price_for("GPT-4o-mini", table).input == 150_000
    assert price_for("openai/gpt-4.1-nano", table).input == 100_000
    # Not a dated snapshot: a different product, so no price rather than a wrong one.
    assert price_for("gpt-4o-audio-preview", table) is None
    assert price_for("llama3:8b", table) is None


def test_longest_family_wins():
    t = {
        "m": ModelPrice("m", 1, 1, 1, 1, 1),
        "m-mini": ModelPrice("m-mini", 2, 2, 2, 1, 1),
    }
    assert price_for("m-mini-2025-01-01", t).input == 2
    assert price_for("m-2025-01-01", t).input == 1


def test_unknown_model_error_says_how_to_fix(table):
    with pytest.raises(UnknownModelPriceError) as exc:
        require_price("llama3:8b", table, None)
    msg = str(exc.value)
    assert "'llama3:8b'" in msg and "--prices input=" in msg and "budgets/prices/openai.toml" in msg
    assert "--max-tokens" in msg and "--max-calls" in msg
    assert exc.value.exit_code == 2
    p = require_price("llama3:8b", table, "input=0.20,output=0.60")
    assert (p.model, p.input, p.output, p.cached_input, p.batch_input) == ("llama3:8b", 200_000, 600_000, 200_000, 100_000)
    assert require_price("gpt-4o-mini", table, None).output == 600_000


def test_price_override_parsing():
    p = parse_price_override("input=0.15, output=0.60,cached_input=0.075")
    assert (p.input, p.cached_input, p.output, p.batch_output) == (150_000, 75_000, 600_000, 300_000)
    for bad, needle in [
        ("input=0.15", "output"),
        ("input=0.15,output=abc", "not a number"),
        ("input=-1,output=1", "non-negative"),
        ("input=0.15,output=0.6,cost=1", "unknown price field"),
        ("input,output=1", "key=value"),
        ("input=0.0000001,output=1", "micro-dollar"),
        ("input=1,input=2,output=1", "twice"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            parse_price_override(bad)


def test_price_table_files(tmp_path):
    assert find_prices_file(None) == find_prices_file("openai")
    assert find_prices_file("openai").name == "openai.toml"
    with pytest.raises(ConfigError, match="No price table named 'nope'"):
        find_prices_file("nope")
    bad = tmp_path / "bad.toml"
    bad.write_text('[models."x"]\ninput = 0.1\n')
    with pytest.raises(ConfigError, match=r"bad\.toml.*missing 'output'"):
        load_price_table(bad)
    bad.write_text("[models\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_price_table(bad)
    good = tmp_path / "mine.toml"
    good.write_text('[models."local-llm"]\ninput = 0.0\noutput = 0.0\n')
    assert load_price_table(good)["local-llm"].output == 0


def test_money_helpers():
    assert usd_to_micro(0.05) == 50_000
    assert usd_to_micro("1.00") == 1_000_000
    assert usd_to_micro(0.0000019) == 1  # a cap rounds down
    with pytest.raises(ConfigError):
        usd_to_micro(-1)
    assert format_usd(450) == "$0.00045"
    assert format_usd(12_300) == "$0.0123"
    assert format_usd(2_980) == "$0.00298"
    assert format_usd(50_000) == "$0.05"
    assert format_usd(2_345_678) == "$2.35"
    assert format_usd(0) == "$0.00"
    assert format_usd(1) == "$0.000001"


def test_budget_presets():
    assert load_budget_profile("smoke") == {"max_usd": 0.05, "target": 50}
    assert load_budget_profile("small") == {"max_usd": 2.0, "target": 500}
    assert load_budget_profile("paper-strategyqa") == {"max_usd": 1.0, "target": 2061}
    names = set(list_budget_profiles())
    assert {"smoke", "small", "paper-strategyqa"} <= names and "prices" not in names


def test_budget_profile_validation(tmp_path):
    f = tmp_path / "caps.toml"
    f.write_text("max_usd = 0.5\nmax_calls = 10\nmax_seconds = 30.5\n")
    assert load_budget_profile(str(f)) == {"max_usd": 0.5, "max_calls": 10, "max_seconds": 30.5}
    for text, needle in [
        ("max_usd = 0.5\nmax_dollars = 3\n", "unknown key.*max_dollars.*Allowed"),
        ("max_usd = -1\n", "negative"),
        ("target = 1.5\n", "whole number"),
        ("max_calls = true\n", "not valid"),
        ('max_usd = "1"\n', "not valid"),
        ('description = "nothing"\n', "sets no cap"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=needle) as exc:
            load_budget_profile(str(f))
        assert str(f) in str(exc.value)
    with pytest.raises(ConfigError, match="Unknown budget profile 'huge'.*paper-strategyqa.*smoke"):
        load_budget_profile("huge")
    with pytest.raises(ConfigError, match="does not exist"):
        load_budget_profile(str(tmp_path / "missing.toml"))


def _app():
    from treegen.cli import app
    from treegen.cli_reports import register

    register(app)
    return app


def test_cli_prices_and_budgets():
    runner = CliRunner()
    app = _app()
    r = runner.invoke(app, ["prices", "gpt-4o-mini-2024-07-18"])
    assert r.exit_code == 0, r.output
    assert "$0.15" in r.output and "$0.60" in r.output and "verify" in r.output
    r = runner.invoke(app, ["prices", "llama3:8b"])
    assert r.exit_code == 2 and "No price known" in r.output
    r = runner.invoke(app, ["budgets"])
    assert r.exit_code == 0 and "paper-strategyqa" in r.output and "target=2061" in r.output
