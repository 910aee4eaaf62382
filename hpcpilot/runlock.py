"""One pilot at a time on an access point.

A second pilot on the same access point (two workers started on it by
mistake, or a rerun while the first run still goes on) would run every job
again, rewrite outputs in place that Harvester may be reading, declare each
of them twice, and take the first run's staged entries for those of an
interrupted attempt. Rank 0 therefore holds a lock on the access point for
the whole run; the kernel releases it when the process ends, however it
ends, so a rerun after a crash is never refused (payloads do not inherit
it: the pilot's descriptors are close-on-exec).
"""
from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from .errors import ExitCode, WorkerError

log = logging.getLogger(__name__)


class RunLock:
    def __init__(self) -> None:
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def take(self, path: Path) -> None:
        """Hold ``path`` (created if need be) until released; WorkerError (exit 64) if another pilot holds it.
        Where no lock can be had (a read-only top, a filesystem without flock, e.g. Lustre mounted without
        it), the run goes on unguarded, with a warning."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never a file a link points at
        except OSError as error:
            log.warning("cannot create %s (%s): a second pilot started on this access point would not be "
                        "refused", path, error.strerror)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkerError(ExitCode.SITE_PROBLEM, f"another pilot is running on this access point (it holds "
                              f"{path}): two workers were started on it; this one leaves every job to the "
                              f"other and touches nothing") from None
        except OSError as error:
            os.close(fd)
            log.warning("cannot lock %s (%s): a second pilot started on this access point would not be "
                        "refused", path, error.strerror)
            return
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock. A close the filesystem fails (its FUSE server gone: ECONNABORTED) is only
        logged: the descriptor is closed all the same, and the run's own exit code says more."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.close(fd)
        except OSError as error:
            log.warning("closing the access point's run lock failed (%s): its filesystem may be gone",
                        error.strerror)
            self._fd = None
