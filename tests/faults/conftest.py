"""Helpers for fault-injection and hostile-input runs of the real pilot.

Faults are real: a small tmpfs for a full disk, a read-only bind mount, a
pilot without root's file-permission override for an unreadable file.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from hpcpilot.accesspoint_writer import job_definition, with_inputs, with_outputs

from ..conftest import mount as _mount, unmount as _umount
from ..e2e.conftest import RUN_TIMEOUT, PilotRun, run_pilot

GOOD_IDS = (9001, 9002, 9003)  # the bystanders every faulty worker also holds

# Root reads any file whatever its mode; without these capabilities it obeys the mode bits like anyone.
WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
WITH_UMASK_000 = ["sh", "-c", 'umask 000; exec "$@"', "sh"]


def input_bytes(pandaid: int, size: int = 0) -> bytes:
    data = f"input of job {pandaid}\n".encode()
    return (data * (size // len(data) + 1))[:size] if size else data * 3


def copy_job(pandaid: int, size: int = 0, **fields) -> tuple[dict, dict]:
    """A job that upper-cases its input into out.<PandaID>."""
    data = {f"in.{pandaid}": input_bytes(pandaid, size)}
    definition = job_definition(pandaid, "tr", f"a-z A-Z < in.{pandaid} > out.{pandaid}", **fields)
    return with_outputs(with_inputs(definition, data), [f"out.{pandaid}"]), data


def with_bystanders(definitions: dict, inputs: dict) -> tuple[dict, dict]:
    """Add the good jobs that must finish whatever happens to the faulty one."""
    for pandaid in GOOD_IDS:
        definitions[pandaid], inputs[pandaid] = copy_job(pandaid)
    return definitions, inputs


def assert_bystanders_finished(run: PilotRun) -> None:
    for pandaid in GOOD_IDS:
        attributes = run.attributes(pandaid)
        assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("finished", 0), (pandaid, attributes)
        assert (run.job_dir(pandaid) / f"out.{pandaid}").read_bytes() == input_bytes(pandaid).upper()


def assert_failed_with(run: PilotRun, pandaid: int, code: int, *diag_words: str) -> dict:
    """The job is declared failed with ``code`` and a diagnostic naming ``diag_words``."""
    attributes = run.attributes(pandaid)
    assert (attributes["jobStatus"], attributes["pilotErrorCode"]) == ("failed", code), attributes
    for word in diag_words:
        assert word in attributes["pilotErrorDiag"], (word, attributes["pilotErrorDiag"])
    return attributes


def run_pilot_under(prefix: list[str], access_point: Path, launch: str = "mpi2", *options: str,
                    env: dict | None = None, timeout: float = RUN_TIMEOUT) -> PilotRun:
    """``run_pilot`` with ``prefix`` (setpriv, a umask shell...) in front of the launcher."""
    return run_pilot(access_point, launch, *options, env=env, timeout=timeout, prefix=tuple(prefix))


@pytest.fixture
def read_only_bind() -> Iterator:
    """``make_read_only(dir)`` turns ``dir`` into a read-only bind mount of itself (root ignores modes)."""
    mounted: list[Path] = []

    def make_read_only(path: Path) -> None:
        try:
            _mount("--bind", str(path), str(path))
            mounted.append(path)
            _mount("-o", "remount,ro,bind", str(path))
        except (subprocess.CalledProcessError, FileNotFoundError) as error:
            pytest.skip(f"cannot make a read-only bind mount here: {getattr(error, 'stderr', error)}")

    yield make_read_only
    for path in reversed(mounted):
        _umount(path)
