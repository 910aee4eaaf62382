"""The benchmark harness runs end to end at its tiny size and prints every row; no speed is asserted."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import communicate_or_kill

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
TIMEOUT = 480  # about 30 s alone; generous for a loaded machine

EXPECTED_ROWS = [
    ("dispatch", "xargs -P 2 (floor)"),
    ("dispatch", "GNU parallel -j 2"),
    ("dispatch", "MPIPoolExecutor, 2 workers"),
    ("dispatch", "pilot 2 ranks x 1 slot"),
    ("dispatch", "pilot 2 ranks x 2 slots"),
    ("dispatch", "pilot 2x1 vs xargs -P 2"),
    ("dispatch", "pilot 2x2 vs xargs -P 2"),
    ("dispatch", "pilot 2x1, cp line exec'd"),
    ("cpu", "CPU per job, bare protocol loop"),
    ("cpu", "CPU per job, pilot 2x1 vs bare loop"),
    ("memory", "peak RSS rank 0, pilot 2 ranks x 1 slot"),
    ("memory", "peak RSS rank 1, pilot 2 ranks x 2 slots"),
    ("stagein", "cp (no checksum)"),
    ("stagein", "cp then separate adler32 pass"),
    ("stagein", "pilot stage_in copy+verify vs cp"),
    ("fsops", "shared-FS file ops per job"),
    ("startup", "json.load 20 definitions, 1 process"),
    ("startup", "read+validate+scatter 80 on 8 rank(s)"),
    ("startup", "per-definition cost 80 vs 20, 2 ranks"),
    ("monitor", "amortised, per 128 payloads"),
    ("eventsvc", "pilot 4 ranks, reference payload"),
    ("eventsvc", "range output -> declaration, max"),
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, dict, Path]:
    work = tmp_path_factory.mktemp("bench")
    report = work / "bench.json"
    argv = [sys.executable, str(BENCH), "--tiny", "--json", str(report), "--workdir", str(work)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # on a timeout, its MPI ranks are killed with it
    stdout, stderr = communicate_or_kill(process, TIMEOUT, "bench.py --tiny")
    done = subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)
    return done, json.loads(report.read_text()) if report.exists() else {}, work


@pytest.mark.timeout(TIMEOUT + 30)
def test_tiny_run_succeeds_and_writes_json(tiny_run):
    done, report, _ = tiny_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert report["sizes"] == "tiny"


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("group, name", EXPECTED_ROWS)
def test_every_measurement_has_its_row_with_a_value(tiny_run, group, name):
    done, report, _ = tiny_run
    rows = {(row["group"], row["name"]): row for row in report["rows"]}
    row = rows.get((group, name))
    assert row is not None, f"missing row {group}/{name}; rows: {sorted(rows)}"
    skipped_for_a_reason = row["value"] is None and row["note"].startswith("skipped:")
    assert row["value"] is not None or skipped_for_a_reason, row
    assert name in done.stdout


@pytest.mark.timeout(TIMEOUT + 30)
def test_no_measurement_failed(tiny_run):
    _, report, _ = tiny_run
    failed = [row for row in report["rows"] if row["name"].endswith("(failed)")]
    assert not failed, failed


@pytest.mark.timeout(TIMEOUT + 30)
def test_rows_with_a_target_say_whether_it_is_met(tiny_run):
    done, report, _ = tiny_run
    with_target = [row for row in report["rows"] if row["target"]]
    assert len(with_target) >= 8
    assert all(row["met"] in (True, False) for row in with_target if row["value"] is not None)
    assert "targets met" in done.stdout


@pytest.mark.timeout(TIMEOUT + 30)
def test_temporary_directories_are_removed(tiny_run):
    _, _, work = tiny_run
    assert [p.name for p in work.iterdir()] == ["bench.json"]
