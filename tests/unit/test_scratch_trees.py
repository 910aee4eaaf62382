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
    assert tree_size(deep_scratch) == 100 + 23 + len("/etc")


@pytest.mark.timeout(60)  # rm -rf is a process of its own
def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(deep_scratch: Path) -> None:
    remove_tree(deep_scratch)
    assert not deep_scratch.exists()
