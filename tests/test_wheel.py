"""The wheel carries everything a run needs: presets, budget profiles and the price table are
shipped inside the package. Built and installed in a fresh environment, run outside the repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_runs_outside_the_repository(tmp_path: Path, yesno_seeds: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, timeout=300)
    wheel = next(wheels.glob("treegen-*.whl"))
    # A fresh environment that sees the installed dependencies but not this checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import treegen, sys; print(treegen.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout
    assert str(REPO) not in where and "site-packages" in where

    def treegen(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-m", "treegen", *args], cwd=elsewhere, capture_output=True, text=True,
                              timeout=300)

    # A capped job with a dollar cap (needs the shipped price table), a preset and a profile.
    for extra in (["--max-usd", "0.01", "--target", "10"], ["--strategy", "novelty", "--target", "10"],
                  ["--budget", "smoke"]):
        done = treegen("run", str(yesno_seeds), "--backend", "sim", "--embedder", "hashing", "--quiet",
                       "--out", str(elsewhere / "runs"), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
    listed = treegen("prices", "--json")
    assert listed.returncode == 0 and "gpt-4o-mini" in listed.stdout
    assert "smoke" in treegen("budgets", "--json").stdout
