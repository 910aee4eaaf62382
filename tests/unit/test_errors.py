"""Errors cross ranks pickled (an event service rank's outcome carries its job error to rank 0)."""
from __future__ import annotations

import pickle

import pytest

from hpcpilot.errors import ErrorCode, ExitCode, JobDefinitionError, PilotError, WorkerError


@pytest.mark.parametrize("error", [PilotError(ErrorCode.WALLTIME, "walltime 5 s exceeded limit 4 s"),
                                   JobDefinitionError(ErrorCode.GENERAL, "field 'PandaID' is missing")])
def test_a_job_error_survives_pickling_with_its_code_and_diagnostic(error: PilotError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.code, copy.diag, str(copy)) == (error.code, error.diag, str(error))


def test_a_worker_error_survives_pickling_with_its_exit_code() -> None:
    error = WorkerError(ExitCode.NO_JOBS, "no jobs in the access point")
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.exit_code, str(copy)) == (WorkerError, error.exit_code, str(error))


def test_an_uncaught_error_of_a_single_rank_ends_it_with_the_internal_error_code(capsys):
    """Grid mode: no MPI to abort, the documented exit code all the same, and the traceback."""
    from hpcpilot.errors import ExitCode
    from hpcpilot.mpi import SerialComm, run_or_abort

    def broken() -> int:
        raise RuntimeError("a bug")

    assert run_or_abort(SerialComm(), broken, ExitCode.EXCEPTION) == ExitCode.EXCEPTION == 70
    assert "RuntimeError: a bug" in capsys.readouterr().err
