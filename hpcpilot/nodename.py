"""This node's name, as the pilot logs it and declares it to Harvester (``node``)."""
from __future__ import annotations

import socket

from .errors import storable_diag


def node_name() -> str:
    """The host name with each character PanDA cannot store, or a terminal would act on, replaced by U+FFFD:
    root may set any bytes as the host name (in a container, its own UTS namespace), and a byte that is not
    UTF-8 comes back as a lone surrogate, which no encoder takes."""
    return storable_diag(socket.gethostname())
