"""An event service job in a container, through the real pilot and real podman, whose scratch path is too long
for a UNIX socket: its channel's socket is then in a directory of the temp directory, which the container must
see as well as the scratch.

The site is an outside plugin whose podman binds, read-only, the host's /usr, this Python and hpcpilot's source
into a root filesystem of symlinks: the reference payload runs in the container as it does outside.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from test_es_workflow import PANDAID, assert_every_range_finished, es_worker, ranges, run_es

import hpcpilot
from hpcpilot.eventservice.channel import MAX_SOCKET_PATH
from hpcpilot.workflow.eventservice import _outside_scratch
from tests.sites.conftest import install_outside_plugin

SITE_CLASS = """
from hpcpilot.sites import Site

class SummitSite(Site):
    pass
"""
MERGED_USR_LINKS = ("bin", "lib", "lib64", "sbin")  # Debian's /bin etc. are links into /usr


def read_only_binds(*directories: str) -> str:
    return ", ".join(f'"--volume", "{directory}:{directory}:ro"' for directory in directories)


def podman_site(root: Path) -> None:
    """Site 'summit', running containers with podman, which binds what the reference payload needs."""
    root.mkdir()
    source = Path(hpcpilot.__file__).parent.parent
    binds = read_only_binds("/usr", sys.prefix, str(source))
    install_outside_plugin(root, SITE_CLASS, f"name: summit\ncontainer:\n  runtimes: [podman]\n"
                                             f"  options:\n    podman: [{binds}]\n")


def usr_image(root: Path) -> Path:
    """An unpacked image that is links into a /usr the site binds from the host."""
    (root / "usr").mkdir(parents=True)
    for name in MERGED_USR_LINKS:
        (root / name).symlink_to(os.readlink(f"/{name}"))
    return root


@pytest.fixture
def short_temp_dir() -> Iterator[Path]:
    """The pilot's temp directory, where its channel's socket goes: its own, so nothing is left in /tmp."""
    directory = Path(tempfile.mkdtemp(prefix="es-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.timeout(300)
def test_a_payload_in_a_container_reaches_the_channel_whose_socket_could_not_be_in_its_scratch(
        tmp_path: Path, podman_environment: dict[str, str], short_temp_dir: Path) -> None:
    """Podman bound only the scratch: the payload could not connect to the channel's socket in the temp
    directory, failed each start, and every range was declared failed."""
    if not all(os.path.islink(f"/{name}") for name in MERGED_USR_LINKS):
        pytest.skip("the image is made of links into /usr: needs a merged-/usr host")
    podman_site(tmp_path / "site")
    all_ranges = ranges(6)
    ap = es_worker(tmp_path, preplaced=all_ranges, container_name=str(usr_image(tmp_path / "rootfs")))
    scratch = tmp_path / ("long-" + "s" * 80)
    scratch.mkdir()
    assert len(os.fsencode(scratch / "hpcpilot-1-12345678/job-7001-12345678/channel")) > MAX_SOCKET_PATH
    env = {**podman_environment, "TMPDIR": str(short_temp_dir),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    run, entries = run_es(ap, "grid", serving=[], env=env, options=("--site", "summit", "--scratch", str(scratch)))
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"event channel listening on {short_temp_dir}/" in run.stderr  # not in the scratch: the case here
    assert_every_range_finished(entries, all_ranges)
    assert run.attributes(PANDAID)["jobStatus"] == "finished"
    assert list(short_temp_dir.iterdir()) == []  # the channel's directory went with it


def test_only_a_channel_outside_the_scratch_is_bound_besides_it(tmp_path: Path) -> None:
    """The usual case, the socket in the scratch, adds nothing to the container's argv."""
    scratch = tmp_path / "job-7001"
    assert _outside_scratch(str(scratch / "channel"), scratch) == []
    assert _outside_scratch("/tmp/hpcpilot-77-abc/channel", scratch) == [Path("/tmp/hpcpilot-77-abc")]
