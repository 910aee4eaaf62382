"""The only module that imports mpi4py, and a serial stand-in for grid mode.

MPI is initialised only when a launcher started this process (mpiexec, srun,
aprun ...): on a login node or a grid worker node, initialising MPI can
fail or hang, and one rank needs no MPI at all.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Any, Callable, Mapping

from .errors import WorkerError
from .nodename import node_name

# Variables that MPI launchers set in every rank they start.
_LAUNCHER_VARIABLES = (
    "PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
    "HYDRA_CONTROL_FD", "ALPS_APP_PE", "PALS_RANKID",
)


def launched_by_mpi(environ: Mapping[str, str] = os.environ) -> bool:
    if any(name in environ for name in _LAUNCHER_VARIABLES):
        return True
    # srun sets SLURM_STEP_ID in job steps; plain sbatch shells have no step.
    return "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ and environ.get("SLURM_NTASKS", "1") != "1"


def launched_size(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many ranks the launcher says it started, where it says so: its PMI, Open MPI's, an srun step's."""
    names = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", *(("SLURM_NTASKS",) if "SLURM_STEP_ID" in environ else ()))
    for name in names:
        try:
            return int(environ[name])
        except (KeyError, ValueError):
            continue
    return None


class SerialComm:
    """The subset of an mpi4py communicator that a one-rank pilot uses."""

    rank = 0
    size = 1

    def bcast(self, value: Any, root: int = 0) -> Any:
        return value

    def gather(self, value: Any, root: int = 0) -> list[Any]:
        return [value]

    def allgather(self, value: Any) -> list[Any]:
        return [value]

    def barrier(self) -> None:
        pass

    def Ibarrier(self) -> "CompletedRequest":
        return CompletedRequest()

    def Abort(self, errorcode: int = 1) -> None:
        os._exit(errorcode)


class CompletedRequest:
    """The request of a non-blocking collective on one rank: complete at once."""

    def Test(self) -> bool:
        return True

    def Wait(self) -> None:
        pass


IDLE_POLL_S = 0.01


def wait_idly(comm: Any, interval: float = IDLE_POLL_S, tick: Callable[[], None] = lambda: None) -> None:
    """A barrier during which waiting ranks sleep, calling ``tick`` between naps.

    MPICH's blocking collectives busy-poll: ranks waiting for rank 0 to
    read the job definitions would take the cores rank 0 needs.
    """
    request = comm.Ibarrier()
    while not request.Test():
        tick()
        time.sleep(interval)


def world(force_mpi: bool = False) -> Any:
    """COMM_WORLD when launched by MPI (or forced), else a SerialComm."""
    if not (force_mpi or launched_by_mpi()):
        return SerialComm()
    from mpi4py import MPI

    return MPI.COMM_WORLD


def node_cpu_sets(comm: Any, own: set[int]) -> list[set[int]]:
    """The CPUs each rank of ``comm`` on this node may run on, given this rank's ``own`` (collective: every rank
    calls it)."""
    if isinstance(comm, SerialComm):
        return [own]
    from mpi4py import MPI

    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node_comm.allgather(own)
    finally:
        node_comm.Free()


def any_source() -> int:
    from mpi4py import MPI

    return MPI.ANY_SOURCE


def new_status() -> Any:
    """An MPI.Status to learn the source of a message received from any rank."""
    from mpi4py import MPI

    return MPI.Status()


def run_or_abort(comm: Any, main: Callable[[], int], exit_code: int) -> int:
    """Run ``main``; an exception escaping it ends every rank, so none hangs in a collective, with
    ``exit_code`` (a WorkerError with its own, its message said without a traceback)."""
    try:
        return main()
    except SystemExit:
        raise
    except WorkerError as error:  # the pilot cannot go on, for a reason it names: no traceback
        sys.stderr.write(f"[{comm.rank}@{node_name()}] {error}; aborting all ranks\n")
        exit_code = error.exit_code
    except BaseException:
        sys.stderr.write(f"[{comm.rank}@{node_name()}] uncaught error, aborting all ranks:\n")
        traceback.print_exc()
    if comm.size > 1:
        abort_every_rank(comm, exit_code)
    return exit_code


# MPI_Abort has the launcher end every rank at once, and its proxies with them: a rank's last lines, still in
# the pipe to its proxy, would be lost (seen with MPICH's hydra). A moment lets the proxy forward them.
ABORT_PAUSE = 0.5


def abort_every_rank(comm: Any, exit_code: int) -> None:
    """MPI_Abort, once this rank's last words have reached the launcher."""
    sys.stderr.flush()
    _unlink_shared_segments()
    time.sleep(ABORT_PAUSE)
    comm.Abort(exit_code)


SHARED_SEGMENT_PREFIX = "/dev/shm/mpich_shm_"


def _unlink_shared_segments() -> None:
    """MPICH's shared-memory segment, which the abort leaves in /dev/shm (node RAM, until someone removes it).
    Every rank of the node mapped it at MPI_Init and keeps it while it lives: its name is needed no more."""
    try:
        with open("/proc/self/maps") as maps:
            segments = {line.split()[-1] for line in maps if SHARED_SEGMENT_PREFIX in line}
    except OSError:
        return
    for segment in segments:
        try:
            os.unlink(segment)
        except OSError:
            pass
