"""The payload's end of the event channel, for payloads written in Python (and for tests)."""
from __future__ import annotations

import os
import socket
import time

from .messages import CHANNEL_ENV, READY, UnreadableMessage, failed_message, finished_message, frame, parse_pilot_answer
from .ranges import EventRange

CONNECT_RETRY_INTERVAL = 0.1


class EventChannelClient:
    """One connection to the pilot's event channel."""

    def __init__(self, address: str, connect_timeout: float = 10.0, read_timeout: float | None = None):
        self.address = address
        self.sock = _connect(address, connect_timeout)
        self.sock.settimeout(read_timeout)
        self._reader = self.sock.makefile("rb")

    @classmethod
    def from_environment(cls, **kwargs: float | None) -> "EventChannelClient":
        address = os.environ.get(CHANNEL_ENV)
        if not address:
            raise RuntimeError(f"{CHANNEL_ENV} is not set: not started by a pilot in event service mode")
        return cls(address, **kwargs)

    def send(self, text: str) -> None:
        self.sock.sendall(frame(text))

    def request(self) -> None:
        self.send(READY)

    def receive(self) -> list[EventRange] | None:
        """The pilot's answer to one request: ranges, or None for ``No more events``."""
        line = self._reader.readline()
        if not line:
            raise ConnectionError("the pilot closed the event channel")
        try:
            return parse_pilot_answer(line.decode())
        except UnicodeDecodeError as error:
            raise UnreadableMessage(f"answer is not UTF-8: {error}") from None

    def finished(self, output_path: str, range_id: str, cpu: float, wall: float) -> None:
        self.send(finished_message(output_path, range_id, cpu, wall))

    def failed(self, code: str, range_id: str, message: str) -> None:
        self.send(failed_message(code, range_id, message))

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> "EventChannelClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _connect(address: str, timeout: float) -> socket.socket:
    """Connect, retrying for a while: the pilot may still be binding the socket."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(address)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() >= deadline:
                raise
            time.sleep(CONNECT_RETRY_INTERVAL)
