"""A test-only FUSE filesystem: one large read-only regular file, served slowly, as from a shared
filesystem under load. Run as a process of its own:

    python tests/slowfs.py MOUNTPOINT --size BYTES --delay SECONDS_PER_READ [--short BYTES] [--lifetime S]

``--short`` answers every read with at most that many bytes (a short read; mount with direct_io so that the
kernel hands it on as it is). It unmounts itself after ``--lifetime`` seconds, so a test that dies leaves no
mount behind for long; tests mount it through the ``slow_file`` fixture, which unmounts it too.
"""
from __future__ import annotations

import argparse
import errno
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from fuse import FUSE, FuseOSError, Operations

FILE_NAME = "big.root"
CYCLE = 251  # byte i of the file is i % CYCLE: a read from a wrong offset shows
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


def unmount(mountpoint: Path) -> None:
    subprocess.run(["umount", "-l", str(mountpoint)], stderr=subprocess.DEVNULL, check=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint", type=Path)
    parser.add_argument("--size", type=int, default=1 << 30)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--short", type=int, default=None)
    parser.add_argument("--lifetime", type=float, default=300)
    args = parser.parse_args()
    timer = threading.Timer(args.lifetime, unmount, (args.mountpoint,))
    timer.daemon = True
    timer.start()
    options = {"direct_io": True} if args.short else {}
    FUSE(SlowFile(args.size, args.delay, args.short), str(args.mountpoint), foreground=True, ro=True, **options)


if __name__ == "__main__":
    sys.exit(main())
