"""What the whole suite shares: no MPI shared memory left behind by the ranks its tests kill."""
from __future__ import annotations

import glob
import os
from typing import Iterator

import pytest

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
