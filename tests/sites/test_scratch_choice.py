"""Choosing node-local scratch: explicit dir, candidates in order, $TMPDIR, system temp.

The "too full" candidate is a real 1 MiB tmpfs, filled up (needs root and
permission to mount; skipped with the reason otherwise).
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from hpcpilot.errors import ErrorCode, PilotError
from hpcpilot.sites import Site, SiteData


def _site(*candidates: str, min_free_mb: int = 1) -> Site:
    return Site(SiteData(name="scratchtest", scratch_candidates=candidates, min_scratch_free_mb=min_free_mb))


def _mount_tmpfs(directory: Path, options: str) -> None:
    directory.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or 'mount failed'}")


@pytest.fixture
def full_tmpfs(tmp_path):
    """A 1 MiB tmpfs with no free byte left."""
    mount_point = tmp_path / "full"
    _mount_tmpfs(mount_point, "size=1m")
    try:
        with open(mount_point / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
            except OSError:
                pass
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], timeout=30, check=False)


@pytest.fixture
def read_only_tmpfs(tmp_path):
    mount_point = tmp_path / "readonly"
    _mount_tmpfs(mount_point, "size=4m,ro")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], timeout=30, check=False)


@pytest.mark.timeout(60)
def test_missing_then_full_candidates_fall_back_to_the_next_usable_one(tmp_path, full_tmpfs):
    good = tmp_path / "good"
    good.mkdir()
    site = _site(str(tmp_path / "missing"), str(full_tmpfs), str(good))
    assert site.choose_scratch(None, {}) == good


@pytest.mark.timeout(60)
def test_read_only_candidate_is_skipped(tmp_path, read_only_tmpfs):
    good = tmp_path / "good"
    good.mkdir()
    assert _site(str(read_only_tmpfs), str(good)).choose_scratch(None, {}) == good


@pytest.mark.timeout(60)
def test_no_usable_candidate_falls_back_to_tmpdir(tmp_path, full_tmpfs):
    job_tmp = tmp_path / "jobtmp"
    job_tmp.mkdir()
    site = _site(str(tmp_path / "missing"), str(full_tmpfs))
    assert site.choose_scratch(None, {"TMPDIR": str(job_tmp)}) == job_tmp


def test_without_candidates_or_tmpdir_the_system_temp_dir_is_used():
    assert _site().choose_scratch(None, {}) == Path(tempfile.gettempdir())


def test_candidate_naming_an_unset_variable_is_dropped(tmp_path):
    site = _site("$NODE_SSD/pilot", str(tmp_path))
    assert site.scratch_candidates({}) == [tmp_path]
    ssd = tmp_path / "ssd"
    (ssd / "pilot").mkdir(parents=True)
    assert site.choose_scratch(None, {"NODE_SSD": str(ssd)}) == ssd / "pilot"


def test_explicit_directory_wins_and_is_created(tmp_path):
    explicit = tmp_path / "explicit" / "scratch"
    other = tmp_path / "other"
    other.mkdir()
    assert _site(str(other)).choose_scratch(explicit, {}) == explicit
    assert explicit.is_dir()


def test_explicit_directory_that_cannot_be_created_is_a_mkdir_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PilotError) as error:
        _site().choose_scratch(blocker / "scratch", {})
    assert error.value.code == ErrorCode.MKDIR_FAILED


def test_bnl_uses_the_job_tmpdir_on_the_node_local_ssd(tmp_path):
    from hpcpilot.sites import load_site

    assert load_site("bnl").choose_scratch(None, {"TMPDIR": str(tmp_path)}) == tmp_path


def test_minimum_free_space_comes_from_the_site_data():
    assert _site(min_free_mb=3).min_scratch_free_bytes() == 3 * 1024 * 1024
