"""Walking and removing a payload's scratch, however deep the payload nested it."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

from hpcpilot.monitor import tree_size
from hpcpilot.workflow.jobflow import remove_tree

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


@pytest.mark.timeout(60)  # rm -rf is a process of its own
def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(deep_scratch: Path) -> None:
    remove_tree(deep_scratch)
    assert not deep_scratch.exists()
