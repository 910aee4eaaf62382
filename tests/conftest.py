"""What the whole suite shares: no MPI shared memory left behind by the ranks its tests kill, and no process
left running by a test that failed before it could end what it started."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import psutil
import pytest

import hpcpilot.atomicfile

MPICH_SEGMENTS = "/dev/shm/mpich_shm_*"


@pytest.fixture(scope="session", autouse=True)
def no_leaked_mpi_shared_memory() -> Iterator[None]:
    """MPICH cannot remove its shared-memory segments when a rank is SIGKILLed (the crash tests do that
    dozens of times; ~2 MB of RAM each): at the end, remove those the suite made that no process maps."""
    before = set(glob.glob(MPICH_SEGMENTS))
    yield
    in_use = _mapped_segments()
    for segment in set(glob.glob(MPICH_SEGMENTS)) - before - in_use:
        try:
            os.unlink(segment)
        except OSError:
            pass


def _mapped_segments() -> set[str]:
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps) as lines:
                mapped.update(line.split()[-1] for line in lines if "/dev/shm/mpich_shm_" in line)
        except OSError:  # gone, or not ours to read
            continue
    return mapped


@pytest.fixture(autouse=True)
def nothing_left_running() -> Iterator[None]:
    """A test that fails (or times out) between starting a pilot and ending it leaves the pilot running, its
    ranks perhaps SIGSTOPped; MPICH's proxy then spins on a core for ever, slowing every later test. What the
    test started and left alive (its fixtures, torn down before this one, have ended theirs) is continued and
    killed."""
    before = {child.pid for child in _descendants()}
    yield
    for child in _descendants():
        if child.pid not in before:
            _kill_stopped_or_not(child)


def _descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _kill_stopped_or_not(process: psutil.Process) -> None:
    try:
        if process.status() != psutil.STATUS_ZOMBIE:
            process.resume()  # a stopped process is killed only once continued
            process.kill()
    except psutil.Error:  # gone meanwhile
        pass


@pytest.fixture
def users_scratch() -> Iterator[Path]:
    """A scratch whose whole tree 'nobody' owns (when we are root), in a directory 'nobody' may write to, as
    a pilot's scratch under its own user's $TMPDIR."""
    base = Path(tempfile.mkdtemp(dir="/tmp"))
    base.chmod(0o777)
    scratch = base / "scratch"
    scratch.mkdir()
    try:
        yield scratch
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(base)], check=False, timeout=30)
        subprocess.run(["rm", "-rf", str(base)], check=False, timeout=30)


SLOWFS = Path(__file__).with_name("slowfs.py")
ANSWER_NOW = ".answer-now"  # tests/slowfs.py's: in its backing directory, ends every delay


@pytest.fixture
def slow_file(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mounts tests/slowfs.py (a FUSE filesystem, in a process of its own) and gives the path of its one large
    file, e.g. ``slow_file(delay=0.05)``; skips the test where FUSE cannot be mounted. Every mount is
    unmounted and its process ended at the end of the test; ``slow_file.server(path)`` is the process serving
    ``path``, for a test to end it sooner (the kernel then fails the reads it has not answered)."""
    mounts: list[tuple[Path, subprocess.Popen]] = []

    def mount(size: int = 1 << 30, delay: float = 0.05, short: int | None = None, lifetime: float = 300) -> Path:
        options = ["--size", str(size), "--delay", str(delay), "--lifetime", str(lifetime)]
        mountpoint = tmp_path / f"slowfs-{len(mounts)}"
        return _mount_slowfs(mountpoint, mounts, [*options, *(["--short", str(short)] if short else [])]) / "big.root"

    mount.server = lambda path: next(process for mountpoint, process in mounts if path.parent == mountpoint)
    try:
        yield mount
    finally:
        _unmount_slowfs(mounts)


@pytest.fixture
def slow_sync_dir(tmp_path: Path) -> Iterator[Callable[[float], Path]]:
    """``slow_sync_dir(seconds)``: a writable directory (tests/slowfs.py over a directory of tmp_path) whose
    every fsync and fdatasync returns ``seconds`` late (``read_delay``: every read too; ``only``: a glob, just
    for the files so named); skips the test where FUSE cannot be mounted; unmounted at the end of the test.
    ``slow_sync_dir.answer(path)`` ends every delay, now and later, of the mount ``path`` is in (as a hung
    filesystem coming back: the pilot's processes end only once it answers)."""
    mounts: list[tuple[Path, subprocess.Popen]] = []

    def mount(sync_delay: float, read_delay: float = 0, only: str = "*") -> Path:
        backing = tmp_path / f"backing-{len(mounts)}"
        backing.mkdir()
        mountpoint = tmp_path / f"slowsync-{len(mounts)}"
        return _mount_slowfs(mountpoint, mounts, ["--backing", str(backing), "--sync-delay", str(sync_delay),
                                                  "--read-delay", str(read_delay), "--only", only])

    def answer(path: Path) -> None:
        mountpoint = next(mountpoint for mountpoint, _ in mounts if mountpoint in path.parents)
        (tmp_path / mountpoint.name.replace("slowsync", "backing") / ANSWER_NOW).touch()

    mount.answer = answer
    try:
        yield mount
    finally:
        _unmount_slowfs(mounts)


def _mount_slowfs(mountpoint: Path, mounts: list[tuple[Path, subprocess.Popen]], options: list[str]) -> Path:
    """tests/slowfs.py with ``options`` mounted on ``mountpoint`` (made here), recorded in ``mounts``."""
    mountpoint.mkdir()
    process = subprocess.Popen([sys.executable, str(SLOWFS), str(mountpoint), *options],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    mounts.append((mountpoint, process))
    _wait_for_mount(mountpoint, process)
    return mountpoint


def _unmount_slowfs(mounts: list[tuple[Path, subprocess.Popen]]) -> None:
    for mountpoint, process in mounts:
        subprocess.run(["umount", "-l", str(mountpoint)], stderr=subprocess.DEVNULL, check=False)
        try:
            process.wait(3)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def mounts_below(directory: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(f"{directory}/")]


def _wait_for_mount(mountpoint: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 15
    while not os.path.ismount(mountpoint):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, stderr = process.communicate()
            pytest.skip(f"cannot mount a FUSE filesystem here (needs /dev/fuse, libfuse2 and fusepy): "
                        f"{stderr.strip()[-300:] or 'no mount after 15 s'}")
        time.sleep(0.05)


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True, timeout=30)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def tmpfs_at() -> Iterator[Callable[[Path], Path]]:
    """``tmpfs_at(dir)`` mounts a real 1 MiB filesystem on ``dir``: writing more fails with ENOSPC. Skips the
    test where it cannot be mounted (not root); every mount is unmounted at the end of the test."""
    mounted: list[Path] = []

    def mount_small_tmpfs(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        try:
            mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path))
        except (subprocess.CalledProcessError, FileNotFoundError) as error:
            pytest.skip(f"cannot mount a tmpfs here: {getattr(error, 'stderr', error)}")
        mounted.append(path)
        return path

    try:
        yield mount_small_tmpfs
    finally:
        for path in reversed(mounted):
            unmount(path)


@pytest.fixture
def small_tmpfs(tmp_path: Path, tmpfs_at: Callable[[Path], Path]) -> Path:
    return tmpfs_at(tmp_path / "tmpfs")


MEMORY_CGROUP_V1 = Path("/sys/fs/cgroup/memory")


def own_memory_cgroup() -> Path | None:
    """This process's cgroup v1 memory directory, where the controller is mounted at the usual place."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return MEMORY_CGROUP_V1 / path.lstrip("/")
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[Callable[..., Path]]:
    """``memory_cgroup(limit_mb, parent=None)`` creates a real cgroup v1 memory cgroup below this process's own
    (or below ``parent``), limited to ``limit_mb`` (None: no limit of its own); a process joins it by writing
    its pid to ``<cgroup>/cgroup.procs``. Skips the test where that cannot be done (not root, no writable
    memory controller). Removed at the end of the test: what still runs in it is moved to the parent first."""
    created: list[Path] = []

    def create(limit_mb: int | None, parent: Path | None = None) -> Path:
        base = parent or own_memory_cgroup()
        if os.geteuid() != 0 or base is None or not (base / "memory.limit_in_bytes").exists():
            pytest.skip("needs root and the cgroup v1 memory controller at /sys/fs/cgroup/memory")
        cgroup = base / f"hpcpilot-test-{os.getpid()}-{len(created)}"
        try:
            cgroup.mkdir()
        except OSError as error:
            pytest.skip(f"cannot create a memory cgroup under {base}: {error}")
        created.append(cgroup)
        if limit_mb is not None:
            (cgroup / "memory.limit_in_bytes").write_text(str(limit_mb * 1024 * 1024))
        return cgroup

    try:
        yield create
    finally:
        for cgroup in reversed(created):
            _empty_into_parent(cgroup)
            cgroup.rmdir()


def _empty_into_parent(cgroup: Path) -> None:
    for pid in (cgroup / "cgroup.procs").read_text().split():
        try:
            (cgroup.parent / "cgroup.procs").write_text(pid)
        except OSError:  # ended meanwhile
            pass


@pytest.fixture(params=["renameat2", "link-unlink"])
def rename_path(request, monkeypatch) -> str:
    """Both ways of a no-replace rename: renameat2, and the hard link and unlink of filesystems without it
    (Lustre, NFS), chosen here on this machine's real filesystem."""
    if request.param == "link-unlink":
        monkeypatch.setattr(hpcpilot.atomicfile, "_renameat2", None)
    return request.param


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
