"""Shared helpers for the site, batch script and container tests."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpcpilot.sites import Site, list_sites, load_site

GOLDEN_DIR = Path(__file__).parent / "golden"
FOUR_SITES = ("titan", "theta", "nersc", "bnl")


def bash_syntax_error(script: str, tmp_path: Path) -> str:
    """bash -n on ``script``: '' when the syntax is fine, else bash's complaint."""
    path = tmp_path / "script.sh"
    path.write_text(script)
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    return "" if result.returncode == 0 else result.stderr


@pytest.fixture(params=list_sites())
def registered_site(request) -> Site:
    return load_site(request.param)
