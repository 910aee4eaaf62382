"""Log formatting with ``[rank@host]`` on every line, and each job's own log.

Only the CLI calls :func:`configure`. Job code logs through :func:`job_logger`,
whose records also land in that job's own log (packed in its log tarball).
"""
from __future__ import annotations

import logging
import sys
import threading
import time

from .nodename import node_name
from .redaction import redact

FORMAT = "%(asctime)s [%(rank)s@%(host)s] %(levelname)-7s %(name)s: %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank
        self.host = node_name()

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        record.host = self.host
        return True


def configure(rank: int, level: str = "INFO") -> None:
    """Send the pilot's log to stderr, each line marked with this rank and host."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RankFilter(rank))
    handler.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class JobLogRouter(logging.Handler):
    """Keeps the lines of records that carry a ``pandaid`` as that job's own log, until the job ends.

    In memory, not in a file: the lines go into the job's log tarball, and a
    file per job (opened, flushed line by line, read back) cost a short job
    more than its payload's own start.
    """

    def __init__(self, rank: int):
        super().__init__(logging.DEBUG)
        self._rank, self._host = rank, node_name()
        self.addFilter(_RankFilter(rank))
        self.setFormatter(logging.Formatter(FORMAT, DATE_FORMAT))
        self._lines: dict[int, list[str]] = {}
        self._guard = threading.Lock()

    def open(self, pandaid: int) -> None:
        with self._guard:
            self._lines[pandaid] = []

    def close_job(self, pandaid: int) -> bytes:
        """The job's log as UTF-8; lines logged for it from now on go to the pilot's log only.

        A character UTF-8 cannot carry is written as its escape: a path that
        does not decode in the node's locale (LC_ALL=C makes every non-ASCII
        byte one) holds lone surrogates, as may a job's field.
        """
        with self._guard:
            return "".join(self._lines.pop(pandaid, ())).encode("utf-8", "backslashreplace")

    def emit(self, record: logging.LogRecord) -> None:
        self._write(getattr(record, "pandaid", None), self.format(record))

    def write_detail(self, pandaid: int, logger: str, text: str) -> None:
        """A line for the job's own log only, formatted as a record would be, without making one."""
        stamp = time.strftime(DATE_FORMAT)
        self._write(pandaid, f"{stamp} [{self._rank}@{self._host}] INFO    {logger}: {text}")

    def _write(self, pandaid: int | None, line: str) -> None:
        lines = self._lines.get(pandaid)
        if lines is not None:
            lines.append(line + "\n")


class JobLog(logging.LoggerAdapter):
    """A logger whose records name the job (so the router files them under it), its secrets redacted."""

    def __init__(self, logger: logging.Logger, pandaid: int, secrets: tuple[str, ...] = (),
                 router: JobLogRouter | None = None):
        super().__init__(logger, {"pandaid": pandaid})
        self.secrets = secrets
        self.router = router

    def detail(self, msg: str, *args: object) -> None:
        """A step of the job worth its own log but not the pilot's (one line per job per step adds up):
        into the job's log file only, unless the pilot logs at DEBUG."""
        if self.router is None or self.logger.isEnabledFor(logging.DEBUG):
            self.debug(msg, *args)
            return
        line, _ = self.process(self._redacted(msg, args), {})
        self.router.write_detail(self.extra["pandaid"], self.logger.name, line)

    def log(self, level, msg, *args, **kwargs):
        if self.secrets and self.isEnabledFor(level):
            msg, args = self._redacted(msg, args), ()
        super().log(level, msg, *args, **kwargs)

    def _redacted(self, msg: object, args: tuple) -> str:
        """The message formatted with its arguments, the job's secrets blanked."""
        text = str(msg) % args if args else str(msg)
        return redact(text, self.secrets) if self.secrets else text

    def process(self, msg, kwargs):
        kwargs["extra"] = self.extra
        return f"job {self.extra['pandaid']}: {msg}", kwargs
