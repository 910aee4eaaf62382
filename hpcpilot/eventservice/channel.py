"""The pilot's end of the local event channel: a UNIX socket server that feeds ranges to a payload.

The payload finds the socket through the environment variable
``HPCPILOT_EVENT_CHANNEL`` and speaks the protocol of :mod:`.messages`.

Two threads, so that waiting for ranges never delays the reading of results:

- the *reader* owns the sockets: it accepts payload connections, reads
  lines, records results and notices a payload going away;
- the *dispatcher* answers ``Ready for events`` in order: it calls the
  ``next_range`` provider, which may block while more ranges are fetched
  from Harvester, and sends the range (or ``No more events``).

Every range taken from the provider ends in exactly one result:
:class:`RangeFinished`, :class:`RangeFailed`, or, when the payload
disconnects (crash) or the channel stops, :class:`RangesLost` for the ranges
that were handed out and not answered (``delivered=True``; the caller fails
them with 1224/1228 and may restart the payload) or drawn but never sent
(``delivered=False``). The channel keeps listening after a disconnection,
so a restarted payload connects to the same address.

A message the pilot cannot read is logged, and fails the oldest range in
flight on that connection (code ``ERR_HPCPILOT_BAD_MESSAGE``): the payload
most likely meant to report it, and the range must not wait forever.
"""
from __future__ import annotations

import contextlib
import logging
import os
import queue
import resource
import selectors
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .. import scratchroot
from .messages import (CHANNEL_ENV, ENCODING, MAX_MESSAGE_BYTES, NO_MORE_EVENTS, FailedReport, FinishedReport, ReadyForEvents,
                       UnreadableMessage, frame, parse_payload_message, ranges_message)
from .ranges import EventRange

log = logging.getLogger(__name__)

BAD_MESSAGE_CODE = "ERR_HPCPILOT_BAD_MESSAGE"
SEND_TIMEOUT = 10.0
MAX_WAITING_REQUESTS = 256  # per connection: a payload's workers may ask at once, but not without end
MAX_CONNECTIONS = 256  # AthenaMP connects once; a payload's workers may each connect, but not without end
# per connection: messages that change nothing, logged each, would let a payload repeating one fill the pilot's log
MAX_LOGGED_IGNORED = 20
ACCEPT_RETRY_SECONDS = 1.0  # after running out of descriptors
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
_READ_CHUNK = 65536


@dataclass(frozen=True)
class RangeFinished:
    event_range: EventRange
    output_path: str
    cpu: float
    wall: float

    @property
    def range_id(self) -> str:
        return self.event_range.eventRangeID


@dataclass(frozen=True)
class RangeFailed:
    event_range: EventRange
    code: str  # the payload's ERR_<CODE>, or BAD_MESSAGE_CODE
    message: str

    @property
    def range_id(self) -> str:
        return self.event_range.eventRangeID


@dataclass(frozen=True)
class RangesLost:
    ranges: tuple[EventRange, ...]
    reason: str
    delivered: bool  # True: the payload had them (crash); False: drawn but never sent

    @property
    def range_ids(self) -> tuple[str, ...]:
        return tuple(r.eventRangeID for r in self.ranges)


RangeResult = RangeFinished | RangeFailed | RangesLost
RangeProvider = Callable[[], "EventRange | None"]
ResultSink = Callable[[RangeResult], None]


@dataclass
class ChannelStats:
    connections: int = 0
    handed_out: int = 0
    finished: int = 0
    failed: int = 0
    lost: int = 0
    bad_messages: int = 0


@dataclass(eq=False)
class _Connection:
    number: int
    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    in_flight: dict[str, EventRange] = field(default_factory=dict)  # insertion order = hand-out order
    open: bool = True
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0  # its requests not yet answered
    flooded: bool = False  # it sent more requests than may wait (said once)
    ignored: int = 0  # its messages that changed nothing (the first MAX_LOGGED_IGNORED logged)


def _private_directory() -> tuple[Path, int | None]:
    """A directory for the socket in the temp directory, where its path is short enough to bind (the job's
    scratch may not be): made as a rank's scratch root is, locked while the process lives, so that one a
    killed process left is removed by the next that makes one there, as a dead rank's root would be."""
    parent = Path(tempfile.gettempdir())
    directory, lock = scratchroot.make_root_to_release(parent)
    scratchroot.reclaim_dead_roots_in_background(parent, own=directory)
    return directory, lock


class EventChannel:
    """Serves event ranges to payload processes over a UNIX socket; see the module docstring.

    ``on_result`` is called from the channel's threads, once per result; keep
    it short. Without it, results are put on :attr:`results` (a queue.Queue).
    """

    def __init__(self, next_range: RangeProvider, on_result: ResultSink | None = None,
                 socket_path: Path | str | None = None, send_timeout: float = SEND_TIMEOUT):
        self._next_range = next_range
        self.results: queue.Queue[RangeResult] = queue.Queue()
        self._on_result = on_result or self.results.put
        self._send_timeout = send_timeout
        self._own_dir, self._own_dir_lock = (None, None) if socket_path else _private_directory()
        self.address = str(socket_path or self._own_dir / "channel")
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._requests: queue.Queue[_Connection] = queue.Queue()
        self._connections: list[_Connection] = []
        self._stash: list[EventRange] = []  # drawn from the provider, not delivered yet
        self._exhausted = False
        self._stats = ChannelStats()
        self._threads: list[threading.Thread] = []
        with contextlib.ExitStack() as made:  # undone if a later step fails (out of descriptors: EMFILE)
            made.callback(self._remove_own_dir)
            self._listener = self._listen()
            made.callback(self._unlisten)
            self._waker_in, self._waker_out = socket.socketpair()
            made.callback(self._waker_in.close)
            made.callback(self._waker_out.close)
            self._selector = selectors.DefaultSelector()
            made.pop_all()
        self._max_connections = connection_cap()
        self._accepting = True
        self._accept_again_at = 0.0  # when accepting is paused: not before then

    # -- public ------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """What the payload's environment needs to find the channel."""
        return {CHANNEL_ENV: self.address}

    def start(self) -> "EventChannel":
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self._selector.register(self._waker_in, selectors.EVENT_READ, self._drain_waker)
        for loop, role in ((self._read_loop, "reader"), (self._dispatch_loop, "dispatcher")):
            thread = threading.Thread(target=loop, name=f"event-channel-{role}", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # "can't start new thread": no socket is left open for a payload never started
                self.stop()
                raise
            self._threads.append(thread)
        log.info("event channel listening on %s", self.address)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close every connection, report what was in flight or undelivered, remove the socket."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._threads:
            self._wake_reader()
        else:  # never started: no reader thread would clean up
            self._close_everything()
        for thread in self._threads:
            if thread is threading.current_thread():  # stop() called from on_result
                continue
            thread.join(timeout)
            if thread.is_alive():
                log.warning("%s still busy after %.0f s (provider blocked?); left behind", thread.name, timeout)
        self._release_stash("event channel stopped before handing them out")
        self._waker_out.close()
        log.info("event channel %s stopped: %s", self.address, self.stats())

    def no_more_ranges(self) -> None:
        """From now on, answer every request with ``No more events`` (e.g. walltime is near)."""
        with self._lock:
            self._exhausted = True

    @property
    def exhausted(self) -> bool:
        """True once the provider said there are no more ranges (or no_more_ranges was called)."""
        return self._exhausted

    def in_flight(self) -> list[EventRange]:
        with self._lock:
            return [r for conn in self._connections for r in conn.in_flight.values()]

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def stats(self) -> ChannelStats:
        with self._lock:
            return ChannelStats(**vars(self._stats))

    def __enter__(self) -> "EventChannel":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- setup and teardown --------------------------------------------------

    def _listen(self) -> socket.socket:
        if len(os.fsencode(self.address)) > MAX_SOCKET_PATH:
            raise ValueError(f"event channel socket path {self.address} is longer than {MAX_SOCKET_PATH} bytes; "
                             "UNIX sockets cannot bind it: choose a shorter directory")
        _remove_stale_socket(Path(self.address))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _wake_reader(self) -> None:
        try:
            self._waker_out.send(b"x")
        except OSError:  # the reader has ended already
            pass

    def _close_everything(self) -> None:
        for conn in list(self._connections):
            self._drop(conn, "event channel stopped")
            self._forget(conn)
        self._selector.close()
        self._waker_in.close()
        self._unlisten()
        self._remove_own_dir()

    def _unlisten(self) -> None:
        self._listener.close()
        Path(self.address).unlink(missing_ok=True)

    def _remove_own_dir(self) -> None:
        if self._own_dir:
            scratchroot.remove_own(self._own_dir)
            scratchroot.release(self._own_dir_lock)
            self._own_dir = self._own_dir_lock = None  # the descriptor's number may be another file's by now

    def _release_stash(self, reason: str) -> None:
        with self._lock:
            stash, self._stash = tuple(self._stash), []
        if stash:
            self._emit(RangesLost(stash, reason, delivered=False))

    # -- reader thread -------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                for key, _ in self._selector.select(timeout=1.0):
                    key.data(key.fileobj)
                self._accept_again_if_due()
        except Exception:  # the pilot must survive whatever a payload does
            log.exception("event channel reader failed; closing the channel")
        finally:
            self._close_everything()

    def _drain_waker(self, sock: socket.socket) -> None:
        sock.recv(64)

    def _accept(self, listener: socket.socket) -> None:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            return
        except OSError as error:  # out of descriptors: wait for some, rather than spin or close the channel
            self._pause_accepting(f"cannot accept a connection ({error.strerror})", ACCEPT_RETRY_SECONDS)
            return
        sock.settimeout(self._send_timeout)
        with self._lock:
            self._stats.connections += 1
            conn = _Connection(self._stats.connections, sock)
            self._connections.append(conn)
            full = len(self._connections) >= self._max_connections
        self._selector.register(sock, selectors.EVENT_READ, lambda _sock: self._read(conn))
        log.info("payload connected to the event channel (connection %d)", conn.number)
        if full:  # further connections wait in the listen backlog; the rank keeps descriptors for its files
            self._pause_accepting(f"{self._max_connections} connections open, the most allowed", 0.0)

    def _pause_accepting(self, reason: str, retry_after: float) -> None:
        """Reader thread only. Accepting resumes once a connection closes and ``retry_after`` has passed."""
        if self._accepting:
            self._selector.unregister(self._listener)
            self._accepting = False
            log.warning("event channel: %s; new connections wait", reason)
        self._accept_again_at = time.monotonic() + retry_after

    def _accept_again_if_due(self) -> None:
        if self._accepting or self._stopping.is_set() or time.monotonic() < self._accept_again_at:
            return
        with self._lock:
            if len(self._connections) >= self._max_connections:
                return
        self._selector.register(self._listener, selectors.EVENT_READ, self._accept)
        self._accepting = True

    def _read(self, conn: _Connection) -> None:
        data = self._receive(conn)
        if data is None:
            return
        conn.buffer += data
        while conn.open and (end := conn.buffer.find(b"\n")) >= 0:
            line = bytes(conn.buffer[:end])
            del conn.buffer[:end + 1]
            self._handle_line(conn, line)
        if conn.open and len(conn.buffer) > MAX_MESSAGE_BYTES:
            self._drop(conn, f"payload sent a line longer than {MAX_MESSAGE_BYTES} bytes; not this protocol")
        if not conn.open:
            self._forget(conn)

    def _receive(self, conn: _Connection) -> bytes | None:
        """New bytes, or None once the connection is gone (then it is dropped and forgotten)."""
        try:
            data = conn.sock.recv(_READ_CHUNK)
        except (BlockingIOError, InterruptedError, socket.timeout):
            return None
        except OSError as error:
            self._drop(conn, f"event channel connection broke: {error}")
            self._forget(conn)
            return None
        if not data:
            self._drop(conn, "payload closed the event channel")
            self._forget(conn)
            return None
        return data

    def _handle_line(self, conn: _Connection, line: bytes) -> None:
        text = line.decode(ENCODING, errors="replace").strip()
        if not text:
            return
        try:
            message = parse_payload_message(text)
        except UnreadableMessage as error:
            self._bad_message(conn, text, str(error))
            return
        if isinstance(message, ReadyForEvents):
            self._request(conn)
        elif isinstance(message, FinishedReport):
            self._finished(conn, message)
        elif isinstance(message, FailedReport):
            self._failed(conn, message)

    def _finished(self, conn: _Connection, report: FinishedReport) -> None:
        event_range = self._answered(conn, report.range_id)
        if event_range:
            self._emit(RangeFinished(event_range, report.output_path, report.cpu, report.wall))

    def _failed(self, conn: _Connection, report: FailedReport) -> None:
        # AthenaMP's ERR_ATHENAMP_PARSE carries the whole range instead of its ID: look for a known ID in the text.
        event_range = self._answered(conn, report.range_id, quiet=True) or self._answered_by_mention(conn, report.text)
        if event_range:
            self._emit(RangeFailed(event_range, report.code, report.message))
        else:
            self._ignored(conn, "error report for a range not in flight, ignored: %s", report.text)

    def _answered(self, conn: _Connection, range_id: str, quiet: bool = False) -> EventRange | None:
        with self._lock:
            event_range = conn.in_flight.pop(range_id, None)
        if event_range is None and not quiet:
            self._ignored(conn, "report for range %s, which is not in flight (answered already, or never handed "
                          "out): ignored", range_id)
        return event_range

    def _ignored(self, conn: _Connection, message: str, *args: object) -> None:
        """Log a message of the payload's that changed nothing, up to MAX_LOGGED_IGNORED per connection."""
        with self._lock:
            conn.ignored += 1
            count = conn.ignored
        if count <= MAX_LOGGED_IGNORED:
            log.warning("connection %d: " + message, conn.number, *args)
        if count == MAX_LOGGED_IGNORED:
            log.warning("connection %d: %d messages ignored; more are counted, not logged", conn.number, count)

    def _answered_by_mention(self, conn: _Connection, text: str) -> EventRange | None:
        with self._lock:
            mentioned = [range_id for range_id in conn.in_flight if range_id in text]
            return conn.in_flight.pop(mentioned[0]) if len(mentioned) == 1 else None

    def _request(self, conn: _Connection) -> None:
        """Queue a request; past MAX_WAITING_REQUESTS unanswered ones a connection's requests are ignored (a
        payload flooding the channel would grow the pilot's memory without bound)."""
        with self._lock:
            flooding = conn.waiting >= MAX_WAITING_REQUESTS
            first_time, conn.flooded = flooding and not conn.flooded, conn.flooded or flooding
            if flooding:
                self._stats.bad_messages += 1
            else:
                conn.waiting += 1
        if not flooding:
            self._requests.put(conn)
        elif first_time:
            log.warning("connection %d: %d requests wait for an answer already; more are ignored",
                        conn.number, MAX_WAITING_REQUESTS)

    def _bad_message(self, conn: _Connection, text: str, diag: str) -> None:
        """Fail the range the message names, if it names one in flight; else the oldest in flight."""
        event_range = self._answered_by_mention(conn, text)
        with self._lock:
            self._stats.bad_messages += 1
            if event_range is None:
                oldest = next(iter(conn.in_flight), None)
                event_range = conn.in_flight.pop(oldest) if oldest else None
        if event_range is None:
            self._ignored(conn, "unreadable message with no range in flight, ignored: %s", diag)
            return
        log.warning("connection %d: unreadable message; failing range %s: %s",
                    conn.number, event_range.eventRangeID, diag)
        self._emit(RangeFailed(event_range, BAD_MESSAGE_CODE, f"payload sent an unreadable message: {diag}"))

    def _drop(self, conn: _Connection, reason: str) -> None:
        """Mark a connection dead (from either thread) and report what it had in flight; idempotent."""
        with self._lock:
            if not conn.open:
                return
            conn.open = False
            lost = tuple(conn.in_flight.values())
            conn.in_flight.clear()
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader if the dispatcher dropped it
        except OSError:
            pass
        if lost:
            log.warning("connection %d: %s with %d range(s) in flight: %s",
                        conn.number, reason, len(lost), ", ".join(r.eventRangeID for r in lost))
            self._emit(RangesLost(lost, reason, delivered=True))
        else:
            log.info("connection %d: %s", conn.number, reason)

    def _forget(self, conn: _Connection) -> None:
        """Reader thread only: the selector is not thread-safe."""
        if conn.ignored > MAX_LOGGED_IGNORED:
            log.warning("connection %d: %d messages ignored in all", conn.number, conn.ignored)
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        with conn.send_lock:
            conn.sock.close()
        self._accept_again_if_due()

    # -- dispatcher thread ---------------------------------------------------

    def _dispatch_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = self._requests.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                conn.waiting -= 1
            if not conn.open:
                continue
            try:
                self._answer(conn)
            except Exception:  # a bug here must neither kill the pilot nor leave the payload waiting
                log.exception("event channel: answering a request failed; no more ranges will be handed out")
                self.no_more_ranges()
                self._send(conn, NO_MORE_EVENTS)

    def _answer(self, conn: _Connection) -> None:
        event_range = self._take_range()
        if event_range is None:
            self._send(conn, NO_MORE_EVENTS)
            return
        with self._lock:
            if self._stopping.is_set():
                self._stash.append(event_range)
                deliverable = False
            elif not conn.open:
                self._stash.insert(0, event_range)  # the next request, from any connection, gets it
                deliverable = False
            else:
                conn.in_flight[event_range.eventRangeID] = event_range
                self._stats.handed_out += 1
                deliverable = True
        if deliverable:
            self._send(conn, ranges_message(event_range))
        elif self._stopping.is_set():
            self._release_stash("event channel stopped before handing them out")

    def _take_range(self) -> EventRange | None:
        with self._lock:
            if self._stash:
                return self._stash.pop(0)
            if self._exhausted:
                return None
        try:
            event_range = self._next_range()
        except Exception:  # e.g. the shared filesystem failed: the payload must still get an answer
            log.exception("event channel: the range provider failed; no more ranges will be handed out")
            event_range = None
        if event_range is None:
            log.info("event channel: no more ranges; answering %r from now on", NO_MORE_EVENTS)
            self.no_more_ranges()
            return None
        if not isinstance(event_range, EventRange):
            raise TypeError(f"next_range returned {type(event_range).__name__}, not an EventRange or None")
        if self._is_in_flight(event_range.eventRangeID):
            log.error("event channel: range %s is already in flight; the duplicate is not handed out",
                      event_range.eventRangeID)
            return self._take_range()
        return event_range

    def _is_in_flight(self, range_id: str) -> bool:
        with self._lock:
            return any(range_id in conn.in_flight for conn in self._connections)

    def _send(self, conn: _Connection, text: str) -> bool:
        with conn.send_lock:
            try:
                conn.sock.sendall(frame(text))
                return True
            except OSError as error:
                failure = error
        self._drop(conn, f"cannot send to the payload: {failure}")
        return False

    # -- results -------------------------------------------------------------

    def _emit(self, result: RangeResult) -> None:
        self._count(result)
        try:
            self._on_result(result)
        except Exception:
            log.exception("event channel: the result handler failed on %s", result)

    def _count(self, result: RangeResult) -> None:
        with self._lock:
            if isinstance(result, RangeFinished):
                self._stats.finished += 1
            elif isinstance(result, RangeFailed):
                self._stats.failed += 1
            else:
                self._stats.lost += len(result.ranges)


def connection_cap() -> int:
    """MAX_CONNECTIONS, or fewer where a quarter of the process's descriptors would not hold them."""
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return MAX_CONNECTIONS if soft_limit == resource.RLIM_INFINITY else max(1, min(MAX_CONNECTIONS, soft_limit // 4))


def _remove_stale_socket(path: Path) -> None:
    """A socket left by an earlier run is replaced; any other file there is an error."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ValueError(f"event channel path {path} exists and is not a socket")
    path.unlink()
