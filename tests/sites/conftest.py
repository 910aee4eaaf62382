"""Shared helpers for the site, batch script and container tests."""
from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from hpcpilot.sites import ENTRY_POINT_GROUP, Site, list_sites, load_site

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


def install_outside_plugin(root: Path, module_source: str, yaml_text: str) -> None:
    """A plugin distribution outside hpcpilot, found by importlib.metadata on PYTHONPATH."""
    package = root / "outside_site"
    package.mkdir()
    (package / "__init__.py").write_text(textwrap.dedent(module_source))
    (package / "site.yaml").write_text(yaml_text)
    dist_info = root / "outside_site-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: outside-site\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nsummit = outside_site:SummitSite\n")
