"""The directory an event channel makes for its socket in the temp directory (the job's scratch path being too
long to bind): never left for good by a process killed with it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest
from channel_harness import ListProvider

from hpcpilot.eventservice import EventChannel
from hpcpilot.eventservice.client import EventChannelClient
from tests.unit.test_scratch_root import killed

CHANNEL_OF_ITS_OWN = """
import time
from hpcpilot.eventservice import EventChannel
channel = EventChannel(lambda: None).start()
print(channel.address, flush=True)
time.sleep(300)
"""


@pytest.fixture
def temp_dir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temp directory of this test and the processes it starts: short, as a socket's path must be."""
    directory = Path(tempfile.mkdtemp(prefix="es-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def process_with_a_channel(temp_dir: Path) -> tuple[subprocess.Popen, Path]:
    """A process serving a channel whose socket is in ``temp_dir``: (the process, the socket)."""
    process = subprocess.Popen([sys.executable, "-c", CHANNEL_OF_ITS_OWN], env={**os.environ, "TMPDIR": str(temp_dir)},
                               stdout=subprocess.PIPE, text=True)
    address = process.stdout.readline().strip()
    if not address:
        killed(process)
        pytest.fail("the process made no channel")
    return process, Path(address)


def dead_channels_removed() -> None:
    """Once this process's removals of dead roots have ended."""
    for thread in threading.enumerate():
        if thread.name == "reclaim-dead-scratch":
            thread.join(timeout=30)
            assert not thread.is_alive()


@pytest.mark.timeout(60)
def test_the_socket_directory_of_a_killed_process_goes_with_the_next_channel_and_a_living_one_s_stays(
        temp_dir: Path) -> None:
    """Ten were found in /tmp after test runs: hpcpilot-es-*, which nothing ever removed."""
    dead, dead_socket = process_with_a_channel(temp_dir)
    living, living_socket = process_with_a_channel(temp_dir)
    try:
        killed(dead)
        assert dead_socket.parent.is_dir()
        with EventChannel(ListProvider([])) as channel:
            dead_channels_removed()
            own = Path(channel.address).parent
            assert sorted(temp_dir.iterdir()) == sorted([living_socket.parent, own])
            with EventChannelClient(str(living_socket), read_timeout=10) as client:  # still served
                client.request()
                assert client.receive() is None
        assert list(temp_dir.iterdir()) == [living_socket.parent]  # its own, removed as it stopped
    finally:
        killed(living)


CHANNELS_SHORT_OF_DESCRIPTORS = """
import os, resource, threading
from hpcpilot.eventservice import EventChannel

def descriptors():
    return sorted(os.listdir("/proc/self/fd"))

def reclaims_ended():
    for thread in threading.enumerate():
        if thread.name == "reclaim-dead-scratch":
            thread.join(30)

before = descriptors()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
outcomes = []
for spare in range(8):  # from too few descriptors for the first step to enough for all
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(map(int, before)) + 1 + spare, hard))
    try:
        EventChannel(lambda: None).stop()
        outcomes.append("made")
    except OSError as error:
        outcomes.append(error.strerror)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    reclaims_ended()
    assert descriptors() == before, (spare, outcomes, before, descriptors())
print(outcomes)
"""


@pytest.mark.timeout(60)
def test_a_channel_that_cannot_be_made_leaves_neither_descriptors_nor_its_directory(temp_dir: Path) -> None:
    """Out of descriptors (a payload's many files, a low ulimit -n): a channel whose listening socket was made but
    not its waker (socketpair) or selector (epoll) left its socket, its directory and its lock held until the
    rank ended. Each step is made to fail in turn: none leaves anything."""
    made = subprocess.run([sys.executable, "-c", CHANNELS_SHORT_OF_DESCRIPTORS], capture_output=True, text=True,
                          env={**os.environ, "TMPDIR": str(temp_dir)}, timeout=50)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "Too many open files" in made.stdout and "made" in made.stdout
    assert list(temp_dir.iterdir()) == []
