"""Static checks run by the test command: the linter (ruff) and the type checker (mypy).

Both read their configuration from pyproject.toml ([tool.ruff], [tool.mypy]: strict on
``sumofparts.model`` and ``sumofparts.adapters``). Each is skipped only when the tool is not installed
(``pip install -e .[test]`` installs both). mypy keeps its cache in pytest's cache directory, so
only the first run pays for analysing torch (about a minute of CPU); later runs take seconds.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=540)


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (pip install -e .[test])")
def test_ruff_finds_nothing():
    result = _run(["ruff", "check", "--no-cache", "src", "tests", "benchmarks", "scripts"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (pip install -e .[test])")
def test_mypy_finds_nothing(request, tmp_path_factory):
    pytest_cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    cache = pytest_cache.mkdir("mypy") if pytest_cache is not None else tmp_path_factory.mktemp("mypy-cache")
    result = _run(["mypy", "--cache-dir", str(cache)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
