"""Each job's own log (logsetup.JobLogRouter), as it goes into the job's log tarball."""
from __future__ import annotations

import logging

from hpcpilot.logsetup import JobLog, JobLogRouter


def test_a_job_log_with_characters_utf8_cannot_carry_is_written_with_their_escapes():
    """A path undecodable in an ASCII locale holds lone surrogates (\\udcc3), and so may a job's field (\\ud800):
    encoding the log failed the job's stage-out, a finished job declared failed with 1008."""
    logger = logging.getLogger("test_job_log")
    router = JobLogRouter(rank=0)
    logger.addHandler(router)
    logger.setLevel(logging.INFO)
    try:
        router.open(7)
        JobLog(logger, 7, router=router).info("scratch /tmp/dir \udcc3\udcbc, field \ud800, caf\u00e9")
        log_bytes = router.close_job(7)
    finally:
        logger.removeHandler(router)
    assert b"scratch /tmp/dir \\udcc3\\udcbc, field \\ud800, caf\xc3\xa9\n" in log_bytes
    log_bytes.decode("utf-8")  # readable as UTF-8
