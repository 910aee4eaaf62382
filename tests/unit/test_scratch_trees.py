"""Walking and removing a payload's scratch, however deep the payload nested it."""
from __future__ import annotations

import os
import pwd
import resource
import signal
import stat
import subprocess
import sys
import tempfile
import time
import tracemalloc
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from hpcpilot.monitor import tree_size
from hpcpilot.mounts import mounts_below
from hpcpilot.scratchtree import remove_tree
from tests.unit.test_harvester_files import unprivileged_outcome

DEPTH = sys.getrecursionlimit() + 500


@pytest.fixture
def deep_scratch(tmp_path: Path) -> Iterator[Path]:
    """A scratch nested deeper than the recursion limit; removed after the test (pytest's own clean-up of
    old temporary directories uses shutil.rmtree, which would fail on it)."""
    root = tmp_path / "scratch"
    deepest = root
    for _ in range(DEPTH + 1):  # os.makedirs recurses too
        os.mkdir(deepest)
        deepest = deepest / "d"
    (deepest.parent / "bottom.dat").write_bytes(b"x" * 100)
    (root / "top.dat").write_bytes(b"y" * 23)
    (root / "link").symlink_to("/etc")  # counted as itself, never followed
    yield root
    remove_tree(root)


@pytest.mark.timeout(60)
def test_tree_size_reaches_the_bottom_of_a_tree_deeper_than_the_recursion_limit(deep_scratch: Path) -> None:
    bottom = deep_scratch.joinpath(*["d"] * DEPTH, "bottom.dat")
    files = (bottom, deep_scratch / "top.dat", deep_scratch / "link")
    assert tree_size(deep_scratch) == sum(os.lstat(path).st_blocks * 512 for path in files) > 0
    assert os.lstat(bottom).st_blocks > 0


def test_tree_size_counts_what_is_on_disk_not_apparent_sizes(tmp_path: Path) -> None:
    """A sparse terabyte and a file of thirty hard links cost what du says, not a false 1104."""
    with open(tmp_path / "sparse", "wb") as handle:
        handle.truncate(1 << 40)
    (tmp_path / "data").write_bytes(os.urandom(1 << 20))
    for number in range(30):
        os.link(tmp_path / "data", tmp_path / f"link{number}")
    data_blocks = os.stat(tmp_path / "data").st_blocks * 512
    assert data_blocks <= tree_size(tmp_path) <= data_blocks + os.stat(tmp_path / "sparse").st_blocks * 512 + 4096


@pytest.mark.timeout(120)
def test_tree_size_of_many_files_costs_no_memory_per_file(tmp_path: Path) -> None:
    """A payload can make millions of files; the disk check and each job's workDirSize walk them all, and
    kept every file's lstat (about 700 bytes each) until the walk ended."""
    for number in range(40_000):
        os.close(os.open(tmp_path / f"f{number}", os.O_CREAT | os.O_WRONLY, 0o644))
    (tmp_path / "data").write_bytes(b"x" * 8192)
    tracemalloc.start()
    try:
        size = tree_size(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size == os.stat(tmp_path / "data").st_blocks * 512
    assert peak < 2 << 20, f"{peak / (1 << 20):.1f} MB"


@pytest.mark.timeout(60)  # rm -rf is a process of its own
def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(deep_scratch: Path) -> None:
    remove_tree(deep_scratch)
    assert not deep_scratch.exists()


def _owned_by_nobody(tree: Path) -> None:
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        subprocess.run(["chown", "-R", f"{nobody.pw_uid}:{nobody.pw_gid}", str(tree)], check=True, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [0o000, 0o500, 0o100], ids=oct)
def test_remove_tree_removes_directories_the_payload_took_its_owner_s_rights_from(users_scratch: Path,
                                                                                  mode: int) -> None:
    """Not root, as on HPC nodes: a directory without write (or read, or search) permission cannot be
    emptied even by its owner, and a job's scratch with one stayed on the node's disk, silently."""
    inner = users_scratch / "output" / "inner"
    inner.mkdir(parents=True)
    for directory in (users_scratch, inner.parent, inner):
        (directory / "data.root").write_bytes(b"x" * 1000)
    _owned_by_nobody(users_scratch)
    inner.parent.chmod(mode)
    assert unprivileged_outcome(lambda: remove_tree(users_scratch)) == "[]"
    assert not users_scratch.exists()


@pytest.fixture
def bind_mounted(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(a scratch tree with a directory bind-mounted inside, under a name with a space; that directory, holding
    a file that must survive). Needs root; whatever stays mounted is unmounted after the test."""
    precious = _precious(tmp_path)
    scratch = tmp_path / "scratch"
    mount_point = scratch / "work dir" / "mounted"
    mount_point.mkdir(parents=True)
    with _bind_mount(precious, mount_point):
        yield scratch, precious


def _precious(tmp_path: Path) -> Path:
    """A directory to bind-mount inside a scratch, holding a file that must survive its removal."""
    if os.geteuid() != 0:
        pytest.skip("bind mounts need root")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.root").write_bytes(b"not the payload's")
    return precious


@contextmanager
def _bind_mount(source: Path, target: Path) -> Iterator[None]:
    """``source`` mounted on ``target`` for the block; unmounted after it if it is still there."""
    subprocess.run(["mount", "--bind", str(source), str(target)], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], stderr=subprocess.DEVNULL, check=False, timeout=30)


@pytest.mark.timeout(60)
def test_remove_tree_unmounts_what_the_payload_left_mounted_and_deletes_nothing_of_it(bind_mounted) -> None:
    """A bind mount of the same filesystem shows as the same device: only the mount table tells."""
    scratch, precious = bind_mounted
    assert [m.point for m in mounts_below(scratch)] == [str(scratch / "work dir" / "mounted")]
    assert remove_tree(scratch) == []
    assert not scratch.exists() and mounts_below(scratch) == []
    assert (precious / "data.root").read_bytes() == b"not the payload's"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["scr atch", "scr\tatch", "scr\\atch", "scr\natch"])
def test_a_mount_is_found_below_a_tree_whose_own_name_mountinfo_escapes(tmp_path: Path, name: str) -> None:
    """The table is searched for the tree's name as mountinfo writes it (octal escapes) before it is parsed."""
    precious = _precious(tmp_path)
    mount_point = tmp_path / name / "mounted"
    mount_point.mkdir(parents=True)
    with _bind_mount(precious, mount_point):
        assert [m.point for m in mounts_below(tmp_path / name)] == [str(mount_point)]
        assert remove_tree(tmp_path / name) == []
    assert not (tmp_path / name).exists()
    assert (precious / "data.root").read_bytes() == b"not the payload's"


@pytest.mark.timeout(60)
def test_a_mount_covered_by_another_mounted_above_it_is_reached_once_that_one_is_gone(bind_mounted,
                                                                                     tmp_path: Path) -> None:
    scratch, precious = bind_mounted
    other = tmp_path / "other"
    other.mkdir()
    (other / "calibration.db").write_bytes(b"not the payload's either")
    covering = scratch / "work dir"
    with _bind_mount(other, covering):
        assert len(mounts_below(scratch)) == 2
        assert remove_tree(scratch) == []
    assert not scratch.exists()
    assert (precious / "data.root").read_bytes() == b"not the payload's"
    assert (other / "calibration.db").read_bytes() == b"not the payload's either"


@pytest.mark.timeout(60)
def test_a_mount_on_the_scratch_itself_is_detached_and_so_is_what_it_covered(bind_mounted, tmp_path: Path) -> None:
    """A root payload's bind mount onto its own scratch, over one inside it: the tree held open was the mounted
    directory, which, once detached, the kernel names "/", so every mount of the node counted as inside the
    scratch, none unmountable, and the scratch stayed, its warning naming them all."""
    scratch, precious = bind_mounted
    other = tmp_path / "other"
    other.mkdir()
    (other / "calibration.db").write_bytes(b"not the payload's either")
    with _bind_mount(other, scratch):
        assert remove_tree(scratch) == []
    assert not scratch.exists() and mounts_below(tmp_path) == []
    assert (precious / "data.root").read_bytes() == b"not the payload's"
    assert (other / "calibration.db").read_bytes() == b"not the payload's either"


@pytest.mark.timeout(60)
def test_a_tree_with_a_mount_the_pilot_cannot_unmount_is_left_whole(bind_mounted) -> None:
    scratch, precious = bind_mounted
    outcome = unprivileged_outcome(lambda: remove_tree(scratch))  # as nobody: umount2 is refused
    assert outcome == repr([str(scratch / "work dir" / "mounted")])
    assert (scratch / "work dir" / "mounted" / "data.root").exists()
    assert (precious / "data.root").read_bytes() == b"not the payload's"


SWAP_FOR_A_LINK = """
import os, sys
directory, elsewhere = sys.argv[1:3]
os.rename(directory, directory + ".moved")
os.symlink(elsewhere, directory)
"""


def payload_swaps_for_a_link(directory: Path, elsewhere: Path) -> None:
    """What a payload can do to its scratch: the directory moved aside, a link to ``elsewhere`` in its place."""
    subprocess.run([sys.executable, "-c", SWAP_FOR_A_LINK, str(directory), str(elsewhere)], check=True, timeout=30)


@pytest.mark.timeout(60)
def test_remove_tree_unmounts_nothing_where_a_link_the_payload_swapped_in_for_its_scratch_leads(tmp_path: Path
                                                                                                ) -> None:
    """The scratch replaced by a link after the caller looked at it: the mounts were looked for below where the
    link leads (realpath), and there detached, as root anywhere on the node."""
    precious = _precious(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "mounted").mkdir(parents=True)
    scratch = tmp_path / "scratch"
    (scratch / "output").mkdir(parents=True)
    with _bind_mount(precious, elsewhere / "mounted"):
        payload_swaps_for_a_link(scratch, elsewhere)
        assert remove_tree(scratch) == []
        assert [m.point for m in mounts_below(elsewhere)] == [str(elsewhere / "mounted")]
    assert (precious / "data.root").read_bytes() == b"not the payload's"


KEEPS_SWAPPING = """
import os, sys
directory, elsewhere = sys.argv[1:3]
print("swapping", flush=True)
while True:  # until ended, or the directory is gone: a directory, a link to elsewhere, a directory again
    os.rename(directory, directory + ".moved")
    os.symlink(elsewhere, directory)
    os.unlink(directory)
    os.rename(directory + ".moved", directory)
"""


@contextmanager
def payload_swapping(directory: Path, elsewhere: Path) -> Iterator[None]:
    """A payload swapping ``directory`` for a link to ``elsewhere`` and back, over and over, for the block."""
    swapper = subprocess.Popen([sys.executable, "-c", KEEPS_SWAPPING, str(directory), str(elsewhere)],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert swapper.stdout.readline() == "swapping\n"
        yield
    finally:
        swapper.kill()
        swapper.wait()


def _read_only_tree(scratch: Path) -> None:
    """A scratch with a read-only subtree (what a payload's chmod leaves), 'nobody's (when we are root)."""
    locked = scratch / "output" / "locked"
    locked.mkdir(parents=True)
    (locked / "data.root").write_bytes(b"x" * 1000)
    _owned_by_nobody(scratch)
    locked.chmod(0o500)
    locked.parent.chmod(0o500)


@pytest.mark.timeout(120)
def test_remove_tree_changes_no_mode_where_a_link_the_payload_keeps_swapping_in_leads(users_scratch: Path) -> None:
    """Not root, as on HPC nodes: a read-only subtree needs its directories made writable again, and the
    payload's link swapped in between the look at the scratch and ``chmod -R`` (which follows a link it is
    given) made a read-only tree elsewhere writable: about one removal in 25 here, of a payload swapping over
    and over; 200 removals. (Mostly sooner, the removal raised: the scratch looked for mounts below, through
    realpath, turned from a link to a directory, or went, under it.)"""
    elsewhere = users_scratch.parent / "elsewhere"
    (elsewhere / "inner").mkdir(parents=True)
    _owned_by_nobody(elsewhere)
    for directory in (elsewhere / "inner", elsewhere):
        directory.chmod(0o500)
    for _ in range(200):
        subprocess.run(["rm", "-rf", str(users_scratch), f"{users_scratch}.moved"], check=True, timeout=30)
        users_scratch.mkdir()
        _read_only_tree(users_scratch)
        with payload_swapping(users_scratch, elsewhere):
            outcome = unprivileged_outcome(lambda: remove_tree(users_scratch))
        modes = [stat.S_IMODE(os.stat(directory).st_mode) for directory in (elsewhere, elsewhere / "inner")]
        assert modes == [0o500, 0o500]
        assert outcome == "[]"  # whatever the swaps left where, nothing raised


@pytest.fixture
def users_fuse_mount(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A scratch owned by 'nobody' with a FUSE filesystem that 'nobody' mounted inside (as squashfuse or
    cvmfsexec would; on the directory named by the test's parameter, "cvmfs" unless given, "" for the scratch
    itself), its server already killed, as a payload's would be. Needs root to set it up: /dev/fuse is opened
    to users for the test's time, as HPC nodes have it."""
    if os.geteuid() != 0:
        pytest.skip("the user's mount is set up as root")
    fuse = pytest.importorskip("fuse")
    from tests.slowfs import SlowFile

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    base.chmod(0o755)
    scratch = base / "scratch"
    mount_point = scratch / getattr(request, "param", "cvmfs")
    mount_point.mkdir(parents=True, exist_ok=True)
    for directory in (base, scratch, mount_point):
        os.chown(directory, nobody.pw_uid, nobody.pw_gid)
    device_mode = os.stat("/dev/fuse").st_mode
    os.chmod("/dev/fuse", 0o666)
    server = os.fork()
    if server == 0:  # the payload's FUSE server, as nobody
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            fuse.FUSE(SlowFile(1 << 20, 0.0, None), str(mount_point), foreground=True, ro=True)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 15
        while not mounts_below(scratch):
            if time.monotonic() > deadline:
                pytest.skip("no FUSE mount as a user here")
            time.sleep(0.1)
        os.kill(server, signal.SIGKILL)
        os.waitpid(server, 0)
        yield scratch
    finally:
        os.chmod("/dev/fuse", device_mode & 0o7777)
        for mount in mounts_below(scratch):
            subprocess.run(["umount", "-l", mount.point], stderr=subprocess.DEVNULL, check=False, timeout=30)
        subprocess.run(["rm", "-rf", "--one-file-system", str(base)], check=False, timeout=30)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("users_fuse_mount", ["cvmfs", ""], ids=["inside", "on the scratch itself"], indirect=True)
def test_a_users_fuse_mount_left_in_scratch_is_detached_by_its_owner_and_the_scratch_removed(users_fuse_mount):
    """Not root, as on HPC nodes: umount2 is refused, fusermount lets the mount's owner detach it. One on the
    scratch itself (a payload mounting on its working directory) left the tree held open outside the node's
    tree, and every mount of the node taken for one inside the scratch, which stayed."""
    outcome = unprivileged_outcome(lambda: remove_tree(users_fuse_mount))
    assert outcome == "[]"
    assert not users_fuse_mount.exists() and mounts_below(users_fuse_mount) == []


def _remove_tree_unable_to_fork(tree: Path) -> list[str]:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))  # as when a payload took every process of the user
    return remove_tree(tree)


@pytest.mark.timeout(60)
def test_remove_tree_removes_a_tree_it_needs_chmod_for_when_no_process_can_be_started(users_scratch: Path) -> None:
    """Raised, the fork's EAGAIN (of ``chmod -R``, then) failed the stage-out after the job's final declaration,
    which declared it again, failed (1008) and without its outputs. The directories are made writable again
    by the rank itself now: no process is needed."""
    locked = users_scratch / "output"
    locked.mkdir()
    (locked / "data.root").write_bytes(b"x" * 1000)
    _owned_by_nobody(users_scratch)
    locked.chmod(0o500)
    assert unprivileged_outcome(lambda: _remove_tree_unable_to_fork(users_scratch)) == "[]"
    assert not users_scratch.exists()
