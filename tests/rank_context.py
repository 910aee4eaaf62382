"""A real RankContext of rank 0 on an access point, for tests that drive a job's phases without a pilot."""
from __future__ import annotations

import logging
import socket
from pathlib import Path

from hpcpilot.config import Config
from hpcpilot.eventstatus import EventStatusPublisher
from hpcpilot.harvester import AccessPoint
from hpcpilot.logsetup import JobLogRouter
from hpcpilot.monitor import Monitor
from hpcpilot.sites import select_site
from hpcpilot.workflow.jobflow import RankContext


def rank_context(access_point_root: Path, scratch: Path) -> RankContext:
    """Its job log router is added to the pilot's logger (remove it where the process goes on)."""
    config = Config()
    access_point = AccessPoint(access_point_root, config.files)
    router = JobLogRouter(rank=0)
    logging.getLogger("hpcpilot").addHandler(router)
    return RankContext(config, access_point, EventStatusPublisher(access_point), 0, socket.gethostname(), scratch,
                       router, Monitor(config.limits, kill=lambda run: None), select_site("generic", {}))
