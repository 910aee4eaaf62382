"""Walking and removing a payload's scratch, however deep the payload nested it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from hpcpilot.monitor import tree_size
from hpcpilot.workflow.jobflow import remove_tree

DEPTH = sys.getrecursionlimit() + 500


def deep_tree(root: Path) -> Path:
    deepest = root
    for _ in range(DEPTH + 1):  # os.makedirs recurses too
        os.mkdir(deepest)
        deepest = deepest / "d"
    deepest = deepest.parent
    (deepest / "bottom.dat").write_bytes(b"x" * 100)
    (root / "top.dat").write_bytes(b"y" * 23)
    (root / "link").symlink_to("/etc")  # counted as itself, never followed
    return deepest


def test_tree_size_reaches_the_bottom_of_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    deep_tree(tmp_path / "scratch")
    assert tree_size(tmp_path / "scratch") == 100 + 23 + len("/etc")


def test_remove_tree_removes_a_tree_deeper_than_the_recursion_limit(tmp_path: Path) -> None:
    deep_tree(tmp_path / "scratch")
    remove_tree(tmp_path / "scratch")
    assert list(tmp_path.iterdir()) == []
