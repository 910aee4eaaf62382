"""This node's name, as the pilot logs it and declares it to Harvester (``node``), and as it tells nodes apart."""
from __future__ import annotations

import os
import socket

from .errors import storable_diag


def node_name() -> str:
    """The host name with each character PanDA cannot store, or a terminal would act on, replaced by U+FFFD:
    root may set any bytes as the host name (in a container, its own UTS namespace), and a byte that is not
    UTF-8 comes back as a lone surrogate, which no encoder takes."""
    return storable_diag(socket.gethostname())


def node_identity() -> bytes:
    """The host name's own bytes, for telling this node from another (a scratch root's lock): two names that
    ``node_name`` shows alike (b"n\\x01", b"n\\x02") are two nodes all the same."""
    return os.fsencode(socket.gethostname())  # undoes the surrogateescape gethostname decoded odd bytes with
