"""Test-only FUSE filesystems, each run as a process of its own:

    python tests/slowfs.py MOUNTPOINT --size BYTES --delay SECONDS_PER_READ [--short BYTES] [--lifetime S]
    python tests/slowfs.py MOUNTPOINT --backing DIRECTORY --sync-delay SECONDS [--read-delay S] [--only GLOB]
                           [--lifetime S]

The first serves one large read-only regular file slowly, as from a shared filesystem under load.
``--short`` answers every read with at most that many bytes (a short read; mount with direct_io so that the
kernel hands it on as it is). The second shows the files of DIRECTORY, writable, and answers each fsync
(fdatasync too) SECONDS late: a disk that takes its time to flush; ``--read-delay`` answers each read late
too, and ``--only`` keeps both delays to the files whose name matches GLOB (one file's write hangs); a file
``.answer-now`` made in DIRECTORY ends every delay (the filesystem answers again). It unmounts itself after ``--lifetime``
seconds, so a test that dies leaves no mount behind for long; tests mount it through the ``slow_file`` and
``slow_sync_dir`` fixtures, which unmount it too.
"""
from __future__ import annotations

import argparse
import errno
import fnmatch
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from fuse import FUSE, FuseOSError, Operations

FILE_NAME = "big.root"
CYCLE = 251  # byte i of the file is i % CYCLE: a read from a wrong offset shows
ANSWER_NOW = ".answer-now"
PATTERN = bytes(range(CYCLE)) * ((8 << 20) // CYCLE + 2)  # longer than the kernel's largest read request


class SlowFile(Operations):
    def __init__(self, size: int, delay: float, short: int | None):
        self.size, self.delay, self.short = size, delay, short
        self.started = time.time()

    def getattr(self, path: str, fh: int | None = None) -> dict:
        times = dict(st_atime=self.started, st_mtime=self.started, st_ctime=self.started)
        if path == "/":
            return dict(st_mode=stat.S_IFDIR | 0o755, st_nlink=2, **times)
        if path == f"/{FILE_NAME}":
            return dict(st_mode=stat.S_IFREG | 0o644, st_nlink=1, st_size=self.size, **times)
        raise FuseOSError(errno.ENOENT)

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", FILE_NAME]

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        time.sleep(self.delay)
        size = min(size, self.short or size, max(0, self.size - offset))
        start = offset % CYCLE
        return PATTERN[start:start + size]


class SlowSyncDirectory(Operations):
    """DIRECTORY's files as they are, each fsync (and read) of those named like ``only`` answered late."""

    def __init__(self, backing: Path, sync_delay: float, read_delay: float = 0, only: str = "*"):
        self.backing, self.sync_delay, self.read_delay, self.only = backing, sync_delay, read_delay, only

    def _late(self, path: str, delay: float) -> None:
        if not fnmatch.fnmatchcase(os.path.basename(path), self.only):
            return
        until = time.monotonic() + delay
        while time.monotonic() < until and not os.path.exists(os.path.join(self.backing, ANSWER_NOW)):
            time.sleep(min(0.1, max(0.0, until - time.monotonic())))

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def getattr(self, path: str, fh: int | None = None) -> dict:
        try:
            status = os.lstat(self._real(path))
        except OSError as error:
            raise FuseOSError(error.errno) from None
        return {key: getattr(status, key) for key in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                                                      "st_atime", "st_mtime", "st_ctime")}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def create(self, path: str, mode: int, fi: object = None) -> int:
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), flags)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._late(path, self.read_delay)
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: int | None = None) -> None:
        os.truncate(self._real(path), length)

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        self._late(path, self.sync_delay)
        os.fsync(fh)

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def rename(self, old: str, new: str) -> None:
        os.rename(self._real(old), self._real(new))

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def link(self, target: str, source: str) -> None:  # fusepy's order: the new name first
        os.link(self._real(source), self._real(target))

    def symlink(self, target: str, source: str) -> None:  # the new link, then what it holds
        os.symlink(source, self._real(target))

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def utimens(self, path: str, times: tuple[float, float] | None = None) -> None:
        os.utime(self._real(path), times)


def unmount(mountpoint: Path) -> None:
    subprocess.run(["umount", "-l", str(mountpoint)], stderr=subprocess.DEVNULL, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--size", type=int, default=1 << 30)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--short", type=int, default=None)
    parser.add_argument("--backing", type=Path, default=None)
    parser.add_argument("--sync-delay", type=float, default=0)
    parser.add_argument("--read-delay", type=float, default=0)
    parser.add_argument("--only", default="*")
    parser.add_argument("--lifetime", type=float, default=300)
    args = parser.parse_args()
    timer = threading.Timer(args.lifetime, unmount, (args.mountpoint,))
    timer.daemon = True
    timer.start()
    if args.backing:
        FUSE(SlowSyncDirectory(args.backing, args.sync_delay, args.read_delay, args.only), str(args.mountpoint), foreground=True)
        return
    options = {"direct_io": True} if args.short else {}
    FUSE(SlowFile(args.size, args.delay, args.short), str(args.mountpoint), foreground=True, ro=True, **options)


if __name__ == "__main__":
    sys.exit(main())
