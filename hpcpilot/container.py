"""Running a payload inside the container a job names, with the site's runtime.

The payload command is a shell line (PanDA ``transformation`` + ``jobPars``);
inside the container the site's shell runs it, in the job's scratch
directory, which is bound into the container at the same path, as is any
other directory the payload must reach (an event channel's socket that could
not be in the scratch).
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

from .errors import ErrorCode, PilotError, storable_diag

log = logging.getLogger(__name__)

RUNTIMES = ("apptainer", "singularity", "shifter", "podman-hpc", "podman")
# The exit code with which a runtime reports a failure of its own (no such image, no registry), never the
# payload's. Apptainer's 255 is no such code: a payload may exit 255 itself.
_OWN_FAILURE = {"podman": 125, "podman-hpc": 125}
# podman's 126 and 127 (podman-run(1)): the command it runs in the container, the site's shell, could not be
# invoked or found there. bash exits so too for the payload's own commands: only podman's error line, which
# names the OCI runtime, tells them apart.
_SHELL_FAILURE = {"podman": (126, 127), "podman-hpc": (126, 127)}
_SHELL_FAILURE_WORDS = "OCI runtime"
# A runtime's message is its last line of stderr; this much of it goes into the job's diagnostic.
MESSAGE_CHARS = 250
# What an image given as a path must be: podman runs an unpacked root filesystem, Apptainer that or a SIF file.
_IMAGE_PATH_KINDS = {"podman": (stat.S_ISDIR,), "podman-hpc": (stat.S_ISDIR,),
                     "apptainer": (stat.S_ISDIR, stat.S_ISREG), "singularity": (stat.S_ISDIR, stat.S_ISREG)}
_ADVICE = "check the job's container_name and the site's container runtime"
_TRANSPORT_SEPARATOR = "://"


class ContainerSite(Protocol):
    """The site hooks this module uses."""

    name: str

    def container_runtimes(self) -> list[str]: ...

    def container_options(self, runtime: str) -> list[str]: ...

    def container_shell(self) -> str: ...


def _apptainer_image(container_name: str) -> str:
    """A path or a 'transport://' reference stays; a bare name is a Docker reference."""
    if container_name.startswith("/") or _TRANSPORT_SEPARATOR in container_name:
        return container_name
    return f"docker://{container_name}"


def _shifter_image(container_name: str) -> str:
    if container_name.startswith("/"):
        raise PilotError(
            ErrorCode.SETUP_FAILED,
            f"shifter runs only gateway images (docker:NAME:TAG), not the path {container_name}",
        )
    if container_name.startswith("docker://"):
        return "docker:" + container_name[len("docker://"):]
    if container_name.startswith("docker:"):
        return container_name
    return f"docker:{container_name}"


def _podman_image(container_name: str) -> list[str]:
    """A directory is an unpacked root filesystem (e.g. on CVMFS); anything else an image reference."""
    if container_name.startswith("/"):
        return ["--rootfs", container_name]
    if container_name.startswith("docker://"):
        return [container_name[len("docker://"):]]
    return [container_name]


def _same_path(directory: Path) -> str:
    return f"{directory}:{directory}"


def _apptainer_argv(executable: str, image: str, scratch: Path, binds: list[Path], options: list[str],
                    env_names: list[str]) -> list[str]:
    # apptainer passes the host environment through by default: env_names need no flags.
    bind_flags = [flag for directory in binds for flag in ("--bind", _same_path(directory))]
    return [executable, "exec", *bind_flags, "--pwd", str(scratch), *options, _apptainer_image(image)]


# Where shifter refuses a user's volume (its validateVolumeMap: a target starting so, by its text; or /opt).
_SHIFTER_REFUSED_PREFIXES = ("/etc", "/var", "/opt/udiImage")
_SHIFTER_REFUSED_TARGETS = ("/opt",)


def _check_shifter_volume(directory: Path) -> None:
    """SETUP_FAILED for a directory shifter would refuse to bind (also through a symlink, which it resolves):
    it would fail with an exit code of its own, taken for the payload's."""
    for path in (str(directory), os.path.realpath(directory)):
        if path.startswith(_SHIFTER_REFUSED_PREFIXES) or path in _SHIFTER_REFUSED_TARGETS:
            raise PilotError(ErrorCode.SETUP_FAILED, f"shifter binds no volume at {directory} (nothing under "
                             f"{', '.join(_SHIFTER_REFUSED_PREFIXES)}, nor at /opt): choose a scratch (--scratch) "
                             "and a TMPDIR (an event channel's socket) elsewhere")


def _shifter_argv(executable: str, image: str, scratch: Path, binds: list[Path], options: list[str],
                  env_names: list[str]) -> list[str]:
    # shifter keeps the caller's environment too.
    for directory in binds:
        _check_shifter_volume(directory)
    volume_flags = [f"--volume={_same_path(directory)}" for directory in binds]
    return [executable, f"--image={_shifter_image(image)}", *volume_flags, f"--workdir={scratch}", *options, "--"]


def _podman_argv(executable: str, image: str, scratch: Path, binds: list[Path], options: list[str],
                 env_names: list[str]) -> list[str]:
    # podman starts from a clean environment: name each variable to copy from ours.
    volume_flags = [flag for directory in binds for flag in ("--volume", _same_path(directory))]
    env_flags = [flag for name in env_names for flag in ("--env", name)]
    return [executable, "run", "--rm", *volume_flags, "--workdir", str(scratch), *env_flags, *options,
            *_podman_image(image)]


_ARGV_BUILDERS: Mapping[str, Callable[[str, str, Path, list[Path], list[str], list[str]], list[str]]] = {
    "apptainer": _apptainer_argv,
    "singularity": _apptainer_argv,
    "shifter": _shifter_argv,
    "podman-hpc": _podman_argv,
    "podman": _podman_argv,
}


def container_command(
    runtime: str,
    executable: str,
    container_name: str,
    command: str,
    scratch: Path,
    options: Iterable[str] = (),
    env_names: Iterable[str] = (),
    shell: str = "/bin/bash",
    binds: Iterable[Path] = (),
) -> list[str]:
    """The argv running shell line ``command`` in ``container_name`` with ``runtime``; ``scratch``, then each
    of ``binds``, bound at the same path."""
    if runtime not in _ARGV_BUILDERS:
        raise PilotError(ErrorCode.SETUP_FAILED, f"unknown container runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    if not container_name.strip():
        raise PilotError(ErrorCode.SETUP_FAILED, "empty container name")
    scratch = Path(scratch)
    prefix = _ARGV_BUILDERS[runtime](executable, container_name, scratch, [scratch, *map(Path, binds)],
                                     list(options), sorted(env_names))
    return [*prefix, shell, "-c", command]


def find_runtime(site: ContainerSite, search_path: str | None = None) -> tuple[str, str]:
    """(runtime, executable path) of the first of the site's runtimes installed here."""
    wanted = site.container_runtimes()
    for runtime in wanted:
        executable = shutil.which(runtime, path=search_path)
        if executable:
            return runtime, executable
    where = search_path if search_path is not None else os.environ.get("PATH", "")
    if not wanted:
        diag = f"site {site.name} offers no container runtime, but the job names a container"
    else:
        diag = f"site {site.name}: no container runtime found: looked for {', '.join(wanted)} on PATH={where}"
    raise PilotError(ErrorCode.SETUP_FAILED, diag)


def runtime_failure(runtime: str, returncode: int, stderr_tail: str = "") -> PilotError | None:
    """The setup error of a container ``runtime`` (as ``runtime_of`` names it) that failed itself, before any
    payload ran: it exited with its own failure code, or could not start the shell in the container (its
    message, the last line of ``stderr_tail``, says so); None for the payload's own exit. The message is
    cleaned once here (a runtime's colours, a NUL): the diagnostic goes into the rank's log as into PanDA."""
    message = storable_diag(_last_line(stderr_tail))
    shell_failed = returncode in _SHELL_FAILURE.get(runtime, ()) and _SHELL_FAILURE_WORDS in message
    if _OWN_FAILURE.get(runtime) != returncode and not shell_failed:
        return None
    said = f": {message[-MESSAGE_CHARS:]}" if message else ""
    return PilotError(ErrorCode.SETUP_FAILED, f"container runtime {runtime} failed before the payload ran "
                      f"(exit {returncode}){said}; {_ADVICE} (the whole message is in the job's payload.stderr)")


def _last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1].strip() if lines else ""


def check_image_path(runtime: str, container_name: str) -> None:
    """An image given as a path must be there and be what ``runtime`` runs (SETUP_FAILED otherwise): a FIFO
    would keep the runtime waiting for a writer, and a file where podman wants a directory fails obscurely."""
    kinds = _IMAGE_PATH_KINDS.get(runtime)
    if kinds is None or not container_name.startswith("/"):
        return
    try:
        mode = os.stat(container_name).st_mode
    except OSError as error:
        raise PilotError(ErrorCode.SETUP_FAILED, f"container image {container_name}: {error.strerror}; {_ADVICE}, "
                         "and that the filesystem holding it (e.g. CVMFS) is mounted on this node") from None
    if not any(kind(mode) for kind in kinds):
        wanted = "a directory (an unpacked image)" if kinds == (stat.S_ISDIR,) else "a directory or an image file"
        raise PilotError(ErrorCode.SETUP_FAILED, f"container image {container_name} is not {wanted} for {runtime}, "
                         f"but {_file_kind(mode)}; {_ADVICE}")


def _file_kind(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a device"


def runtime_of(argv: list[str]) -> str:
    """The runtime that runs an argv of ``wrap_command``."""
    return os.path.basename(argv[0])


def wrap_command(
    site: ContainerSite,
    container_name: str,
    command: str,
    scratch: Path,
    env_names: Iterable[str] = (),
    search_path: str | None = None,
    binds: Iterable[Path] = (),
) -> list[str]:
    """argv that runs the payload shell line ``command`` inside ``container_name``.

    ``scratch`` is bound at the same path and is the working directory, and
    so is each of ``binds`` (the payload's paths outside its scratch);
    ``env_names`` are variables (e.g. the site's payload environment) to pass
    into runtimes that do not inherit the environment. Raises
    PilotError(SETUP_FAILED) when no runtime of the site is installed, or an image path is no image.
    """
    runtime, executable = find_runtime(site, search_path)
    check_image_path(runtime, container_name)
    argv = container_command(
        runtime, executable, container_name, command, Path(scratch),
        options=site.container_options(runtime), env_names=env_names, shell=site.container_shell(), binds=binds,
    )
    log.info("site %s: payload runs in container %s with %s", site.name, container_name, runtime)
    return argv
