"""Shared helpers for the site, batch script and container tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

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


@pytest.fixture
def podman_environment(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for podman here: private image storage, and runc with modest ulimits (crun cannot set
    them in this sandbox). Skips where podman or runc is not installed."""
    if not shutil.which("podman") or not shutil.which("runc"):
        pytest.skip("podman and runc are not installed (apt-get install podman runc)")
    # conmon's attach socket lives under the run root: keep its path short (108-byte socket path limit).
    run_root = Path(tempfile.mkdtemp(prefix="podrun", dir="/tmp"))
    storage = tmp_path / "storage.conf"
    storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp_path}/graph"\nrunroot = "{run_root}"\n')
    containers = tmp_path / "containers.conf"
    containers.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
                          '[engine]\nruntime = "runc"\n')
    try:
        yield {**os.environ, "CONTAINERS_STORAGE_CONF": str(storage), "CONTAINERS_CONF": str(containers)}
    finally:
        shutil.rmtree(run_root, ignore_errors=True)
