"""Batch scripts for a site: ready to submit, or as a template Harvester fills in.

Each site ships a template file whose placeholders are Harvester's own
(``{nNode}``, ``{accessPoint}``, ... see shared/PROTOCOL.md section 6) plus
``{hpcpilot_*}`` ones for the site's pieces (directives, setup lines,
launcher). A concrete script fills both kinds; a Harvester template fills
only the site's pieces, with their braces doubled, and writes Harvester's
placeholders back out, so that Harvester's ``str.format_map`` renders it.
Template files therefore contain no literal braces at all.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .atomicfile import atomic_writer
from .sites import Site, SitePluginError, select_site

HARVESTER_PLACEHOLDERS = frozenset({
    "nNode", "nCorePerNode", "nCoreTotal", "requestRam", "requestRamPerCore", "requestDisk",
    "requestWalltime", "requestWalltimeMinute", "accessPoint", "workerID", "harvesterID",
    "computingSite", "pandaQueueName", "localQueueName", "logDir", "logSubDir",
})
SITE_PLACEHOLDERS = frozenset({
    "hpcpilot_site", "hpcpilot_directives", "hpcpilot_setup", "hpcpilot_launcher",
    "hpcpilot_run_args", "hpcpilot_ranks_per_node", "hpcpilot_signal_margin",
})
DIRECTIVE_PREFIX = {"slurm": "#SBATCH", "pbs": "#PBS", "cobalt": "#COBALT", "none": "#"}
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_WALLTIME = re.compile(r"(\d+):([0-5]\d):([0-5]\d)")
# Beyond any machine or partition, so a typo (an extra digit or three): the largest machines have about 160,000
# nodes (Fugaku), the longest queues weeks; a scheduler would hold such a job pending forever, or refuse it.
MAX_NODES = 1_000_000
MAX_WALLTIME_HOURS = 365 * 24
NEW_SCRIPT_MODE = 0o666  # less the umask, as open() gives a new file
# Characters that would break the unquoted directive lines or the quoted variable.
_UNSAFE_PATH = re.compile(r"[\s'\"{}$`\\]")


class BatchScriptError(ValueError):
    """A batch script request that cannot be rendered; the message says why."""


@dataclass(frozen=True)
class BatchRequest:
    """What one batch job asks for."""

    nodes: int
    walltime_seconds: int
    access_point: str
    ranks_per_node: int = 1
    cores_per_node: int | None = None  # None: the site's own


def request_cores_per_node(site: Site, request: BatchRequest) -> int:
    """The request's cores per node: its own override, else the site's."""
    return site.cores_per_node() if request.cores_per_node is None else request.cores_per_node


def parse_walltime(walltime: str) -> int:
    """'HH:MM:SS' -> seconds (hours may exceed 23)."""
    match = _WALLTIME.fullmatch(walltime.strip())
    if not match:
        raise BatchScriptError(f"walltime {walltime!r}: expected HH:MM:SS")
    hours, minutes, seconds = (int(part) for part in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if not 0 < total <= MAX_WALLTIME_HOURS * 3600:
        raise BatchScriptError(f"walltime {walltime!r}: must be from 00:00:01 to {MAX_WALLTIME_HOURS}:00:00 "
                               "(365 days)")
    return total


def harvester_values(site: Site, request: BatchRequest) -> dict[str, object]:
    """The placeholder values Harvester would compute for ``request`` (its submitters' rules)."""
    cores_per_node = request_cores_per_node(site, request)
    return {
        "nNode": request.nodes,
        "nCorePerNode": cores_per_node,
        "nCoreTotal": request.nodes * cores_per_node,
        "requestWalltime": request.walltime_seconds,
        "requestWalltimeMinute": math.ceil(request.walltime_seconds / 60),
        "accessPoint": request.access_point,
    }


def _escape_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _directive_lines(site: Site, extra_directives: Sequence[str]) -> str:
    """Directive lines, each preceded by a newline (the template puts them after its own)."""
    prefix = DIRECTIVE_PREFIX[site.scheduler()]
    directives = [*site.batch_directives(), *extra_directives]
    for directive in directives:
        if "\n" in directive or "\r" in directive:  # its next line would be a command of the script, not a directive
            raise BatchScriptError(f"directive {directive!r}: one line each (give several --directive)")
    return "".join(f"\n{prefix} {directive}" for directive in directives)


def site_values(
    site: Site, ranks_per_node: int, extra_args: Sequence[str], extra_directives: Sequence[str],
    signal_margin: int | None,
) -> dict[str, str]:
    """The ``{hpcpilot_*}`` pieces of the template, as plain text."""
    margin = _margin(site, signal_margin)
    run_args = "".join(f" {shlex.quote(arg)}" for arg in extra_args)
    return {
        "hpcpilot_site": site.name,
        "hpcpilot_directives": _directive_lines(site, extra_directives),
        "hpcpilot_setup": "\n".join(site.batch_setup_lines()),
        "hpcpilot_launcher": site.launcher_line(),
        "hpcpilot_run_args": run_args,
        "hpcpilot_ranks_per_node": str(ranks_per_node),
        "hpcpilot_signal_margin": str(margin),
    }


def check_template(text: str, where: str) -> None:
    """A template may hold only known placeholders and no literal braces."""
    unknown = set(_PLACEHOLDER.findall(text)) - HARVESTER_PLACEHOLDERS - SITE_PLACEHOLDERS
    if unknown:
        raise BatchScriptError(
            f"{where}: unknown placeholder(s) {', '.join(sorted(unknown))} (write bash's ${{X}} as $X)"
        )
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        raise BatchScriptError(f"{where}: literal braces are not allowed (Harvester's format_map would eat them)")


def _checked_request(
    site: Site, nodes: int | None, walltime: str | None, access_point: str | Path | None, ranks_per_node: int,
    cores_per_node: int | None = None,
) -> BatchRequest:
    if nodes is None:
        raise BatchScriptError("the number of nodes is required (--nodes N)")
    if not 1 <= nodes <= MAX_NODES:
        raise BatchScriptError(f"nodes {nodes}: must be from 1 to {MAX_NODES:,} (the largest machines have about "
                               "160,000)")
    if walltime is None:
        raise BatchScriptError("walltime is required (HH:MM:SS)")
    if cores_per_node is not None and cores_per_node < 1:
        raise BatchScriptError(f"cores per node {cores_per_node}: must be at least 1")
    request = BatchRequest(nodes, parse_walltime(walltime), _checked_access_point(access_point), ranks_per_node,
                           cores_per_node)
    cores = request_cores_per_node(site, request)
    if ranks_per_node > cores:
        raise BatchScriptError(f"ranks per node {ranks_per_node}: site {site.name} has only {cores} cores per node")
    return request


def _margin(site: Site, signal_margin: int | None) -> int:
    """Seconds before the walltime limit that SIGUSR1 comes: the request's, else the site's."""
    margin = site.signal_margin_seconds() if signal_margin is None else signal_margin
    if margin < 0:
        raise BatchScriptError(f"signal margin {margin}: must not be negative (seconds before the walltime limit)")
    return margin


def _check_margin_fits(margin: int, walltime_seconds: int) -> None:
    """The stop signal must leave the pilot time to run jobs: a margin of the whole walltime stops it at once."""
    if margin >= walltime_seconds:
        raise BatchScriptError(f"signal margin {margin} s: must be shorter than the walltime ({walltime_seconds} s); "
                               f"lower it with --signal-margin")


def _checked_access_point(access_point: str | Path | None) -> str:
    if access_point is None or not str(access_point):
        raise BatchScriptError("access point is required")
    text = str(access_point)
    if not text.startswith("/"):
        raise BatchScriptError(f"access point {text!r}: must be an absolute path")
    if _UNSAFE_PATH.search(text):
        raise BatchScriptError(f"access point {text!r}: blanks, quotes, braces, $, ` and \\ are not supported")
    return text


def render_batch_script(
    site: Site,
    nodes: int | None,
    walltime: str | None,
    access_point: str | Path | None,
    ranks_per_node: int = 1,
    harvester_template: bool = False,
    extra_args: Sequence[str] = (),
    extra_directives: Sequence[str] = (),
    signal_margin: int | None = None,
    cores_per_node: int | None = None,
) -> str:
    """A complete batch script for ``site``'s scheduler and launcher.

    ``extra_args`` go on the ``hpcpilot run`` line; ``extra_directives`` are
    added as scheduler directives (e.g. ``--account=X``); ``cores_per_node``
    overrides the site's (a smaller partition, a test cluster). With
    ``harvester_template`` the result keeps Harvester's placeholders and
    ``nodes``, ``walltime``, ``access_point`` and ``cores_per_node`` are
    ignored (may be None): Harvester fills in ``{nCorePerNode}`` itself.
    """
    if ranks_per_node < 1:
        raise BatchScriptError(f"ranks per node {ranks_per_node}: must be at least 1")
    template = site.batch_template()
    check_template(template, f"batch template of site {site.name}")
    pieces = site_values(site, ranks_per_node, extra_args, extra_directives, signal_margin)
    if harvester_template:
        values: Mapping[str, object] = {
            **{key: _escape_braces(value) for key, value in pieces.items()},
            **{key: "{" + key + "}" for key in HARVESTER_PLACEHOLDERS},
        }
    else:
        request = _checked_request(site, nodes, walltime, access_point, ranks_per_node, cores_per_node)
        _check_margin_fits(_margin(site, signal_margin), request.walltime_seconds)
        values = {**pieces, **harvester_values(site, request)}
    try:
        return template.format_map(values)
    except KeyError as error:
        raise BatchScriptError(f"site {site.name}: template needs {error}, which a concrete script cannot fill") from None


# -- command line ---------------------------------------------------------


def add_batch_script_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``hpcpilot batch-script``."""
    parser.add_argument("--site", metavar="NAME", help="site name (default: detected here, else generic); see "
                        "'hpcpilot sites'")
    parser.add_argument("--nodes", type=int, metavar="N", help="number of nodes (not needed with --harvester-template)")
    parser.add_argument("--walltime", metavar="HH:MM:SS", help="the batch job's time limit (not needed with "
                        "--harvester-template)")
    parser.add_argument("--access-point", metavar="DIR", help="absolute path of the access point (not needed with "
                        "--harvester-template)")
    parser.add_argument("--ranks-per-node", type=int, default=1, metavar="N",
                        help="pilot ranks per node (default 1); each gets the node's cores / N")
    parser.add_argument("--cores-per-node", type=int, metavar="N",
                        help="cores per node, instead of the site's (not used with --harvester-template)")
    parser.add_argument("--harvester-template", action="store_true",
                        help="write Harvester placeholders ({nNode}, {accessPoint}, ...) instead of values")
    parser.add_argument("--directive", action="append", default=[], metavar="TEXT",
                        help="extra scheduler directive, e.g. --directive=--account=abc (repeatable)")
    parser.add_argument("--pilot-args", default="", metavar="'ARGS'",
                        help="extra arguments for the 'hpcpilot run' line, one shell-quoted string")
    parser.add_argument("--signal-margin", type=int, metavar="SECONDS",
                        help="seconds before the walltime limit to send SIGUSR1 (default: the site's, 300 for the "
                             "sites shipped here)")
    parser.add_argument("--output", "-o", metavar="FILE",
                        help="write the script to this file, replacing it in one rename: never half-written, its "
                             "permissions kept (default: standard output)")


def run_batch_script(args: argparse.Namespace) -> int:
    """``hpcpilot batch-script``: print (or write) the script; 2 on a bad request."""
    try:
        site = select_site(args.site)
        script = render_batch_script(
            site, args.nodes, args.walltime, args.access_point,
            ranks_per_node=args.ranks_per_node, harvester_template=args.harvester_template,
            extra_args=_pilot_args(args.pilot_args), extra_directives=args.directive,
            signal_margin=args.signal_margin, cores_per_node=args.cores_per_node,
        )
        if args.output:
            _write_script(Path(args.output), script)
        else:
            sys.stdout.write(script)
    except (BatchScriptError, SitePluginError) as error:
        print(f"hpcpilot batch-script: {error}", file=sys.stderr)
        return 2
    return 0


def _pilot_args(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as error:
        raise BatchScriptError(f"--pilot-args {text!r}: {error} (give one shell-quoted string)") from None


def _write_script(path: Path, script: str) -> None:
    """Replace ``path`` in one rename: a crash or a full disk leaves the old script or none, never half of one
    that a later sbatch would submit. Kept as writing in place kept them: an existing script's permissions (its
    x bits), a symlink (its target is replaced), and a device or FIFO (/dev/stdout), which is written to."""
    target = os.path.realpath(path)
    try:
        existing = _status_or_none(target)
        if existing is not None and not stat.S_ISREG(existing.st_mode):  # no file to replace
            path.write_text(script)
            return
        with atomic_writer(Path(target), mode=NEW_SCRIPT_MODE) as writer:
            if existing is not None:
                os.fchmod(writer.fd, stat.S_IMODE(existing.st_mode))
            writer.write(script.encode())
    except OSError as error:
        raise BatchScriptError(f"cannot write {path}: {error.strerror}") from None


def _status_or_none(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
