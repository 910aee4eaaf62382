"""Declaring entries in ``event_status.dump.json``, Harvester's hand-off of outputs and event ranges.

PROTOCOL.md (section 2): Harvester renames the dump to ``.read`` before it reads it, and a pilot must never
overwrite one it has not yet renamed. The publisher keeps entries in a durable journal beside the dump and
publishes them by a rename that never replaces, taking back a dump Harvester has not taken yet.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from .atomicfile import json_bytes, read_json, rename_no_replace, write_json, write_new
from .harvester import TAKEN_SUFFIX, AccessPoint

log = logging.getLogger(__name__)

NOTHING_TAKEN = object()  # no taken-back dump beside a journal (None would be valid JSON)


class EventStatusPublisher:
    """Declares entries in ``event_status.dump.json`` without ever replacing an unconsumed file.

    Entries are first *staged* in a hidden journal file in the job directory
    (durable, already in the dump's format); *publishing* renames that
    journal to the dump name without replacing one. A dump Harvester has not
    yet renamed to ``.read`` is *taken back* first: renamed to a hidden name
    (atomic against Harvester's own rename: the second one fails, and
    Harvester, which logs it, looks again next cycle), its entries put
    before the journal's, and published again with them. So no entry is
    read twice or lost, and nothing waits for Harvester's cycle (minutes;
    an event service job declares every few seconds, and the pilot's last
    declarations would otherwise outlive it). A job's entries
    are staged before its final state is written and published after it, so
    after a crash a final job's entries are still there to publish, and a
    job run again never has stale entries published. Staged entries wait
    for their job's ``publish``: ``flush`` never publishes a job whose final
    state is not yet (or could not be) written.
    """

    def __init__(self, access_point: AccessPoint):
        self.access_point = access_point
        self._staged: set[int] = set()  # journal written, not yet to be published
        self._waiting: set[int] = set()  # to be published as soon as the dump is free
        self._foreign_dumps: set[int] = set()  # jobs whose dump there the pilot cannot read: not taken back
        self._taken_left: set[int] = set()  # a taken-back dump still beside the journal: merged before publishing

    def stage(self, pandaid: int, entries: Iterable[dict[str, Any]]) -> None:
        """Record ``entries`` durably, after any still unpublished ones."""
        journal = self.journal_path(pandaid)
        content = {str(pandaid): self._journal(pandaid) + list(entries)}
        # The usual case, no journal yet: open and write, as nothing reads it before it is complete.
        # Otherwise, entries are added to unpublished ones, or a stale journal of an earlier run is replaced.
        if self._has_journal(pandaid) or not _written_new(journal, content):
            write_json(journal, content)
        if pandaid not in self._waiting:
            self._staged.add(pandaid)

    def publish(self, pandaid: int) -> bool:
        """Make the staged entries visible to Harvester if the dump is free; True when none wait."""
        if pandaid in self._staged:
            self._waiting.add(pandaid)
            self._staged.discard(pandaid)
        if pandaid not in self._waiting:
            return True
        if pandaid in self._taken_left and not self._merge_taken(pandaid):
            return False
        published = self._renamed_onto_dump(pandaid) or (self._took_back(pandaid) and
                                                          self._renamed_onto_dump(pandaid))
        if published:
            self._waiting.discard(pandaid)
            self._foreign_dumps.discard(pandaid)  # that dump is gone: Harvester took it
        return published

    def _renamed_onto_dump(self, pandaid: int) -> bool:
        """The journal renamed to the dump name; False while a dump is there."""
        journal, dump = self.journal_path(pandaid), self._dump(pandaid)
        try:
            rename_no_replace(journal, dump)
        except FileExistsError:
            if not _same_file(journal, dump):
                return False
            journal.unlink(missing_ok=True)  # linked by the fallback, which then stopped short
        except FileNotFoundError:  # published and cleared already
            pass
        return True

    def _took_back(self, pandaid: int) -> bool:
        """Move the dump Harvester has not taken yet into the journal, before its entries; False if it cannot
        be (it then waits for Harvester, as before)."""
        if pandaid in self._foreign_dumps or not self._merge_taken(pandaid):  # one a crash left first
            return False
        try:
            rename_no_replace(self._dump(pandaid), self._taken_path(pandaid))
        except FileNotFoundError:  # Harvester has just taken it
            return True
        except OSError as error:
            log.warning("cannot take back %s of job %s to add to it (%s): its entries wait for Harvester to "
                        "take it", self._dump(pandaid), pandaid, error)
            return False
        return self._merge_taken(pandaid)

    def _merge_taken(self, pandaid: int) -> bool:
        """A taken-back dump's entries put before the journal's, each once (a crash may have come after the
        journal was written and before the taken file was removed); False, and the dump put back for
        Harvester, if that cannot be done."""
        older = self._taken_content(pandaid)
        if older is NOTHING_TAKEN:
            self._taken_left.discard(pandaid)
            return True
        return self._merge_in(pandaid, older)

    def _taken_content(self, pandaid: int) -> Any:
        """What the taken-back dump holds (an exception if it cannot be read), or NOTHING_TAKEN."""
        try:
            return read_json(self._taken_path(pandaid))
        except FileNotFoundError:
            return NOTHING_TAKEN
        except (OSError, ValueError) as error:
            return error

    def _merge_in(self, pandaid: int, older: Any) -> bool:
        taken, journal = self._taken_path(pandaid), self.journal_path(pandaid)
        self._taken_left.add(pandaid)  # until it is gone
        if any(_same_file(taken, seen) for seen in self.dumps_seen(pandaid)):
            taken.unlink(missing_ok=True)  # a take-back by hard link that a crash stopped short: still Harvester's
            self._taken_left.discard(pandaid)
            return True
        if not _is_dump(older):
            self._foreign_dumps.add(pandaid)  # not the pilot's, or unreadable: Harvester alone takes it
            return self._put_back(pandaid, f"it is no dump of declarations: {older}")
        try:
            write_json(journal, _merged(older, read_json(journal) if journal.exists() else {}))
        except OSError as error:
            return self._put_back(pandaid, f"cannot add its entries to {journal.name}: {error}")
        try:
            taken.unlink()
        except OSError as error:  # its entries are in the journal too: not published before it is gone
            log.warning("cannot remove %s (%s): job %s's entries wait", taken, error, pandaid)
            return False
        self._taken_left.discard(pandaid)
        return True

    def _put_back(self, pandaid: int, reason: str) -> bool:
        dump = self._dump(pandaid)
        log.warning("%s of job %s is left for Harvester to take, as it was (%s); the job's later entries wait "
                    "for that", dump, pandaid, reason)
        try:
            rename_no_replace(self._taken_path(pandaid), dump)
            self._taken_left.discard(pandaid)
        except OSError as error:  # kept under the hidden name: the next publication or run tries again
            log.error("cannot put %s back: %s", dump, error)
        return False

    def declare(self, pandaid: int, entries: Iterable[dict[str, Any]]) -> bool:
        """Stage and publish; True if Harvester can see the entries now."""
        self.stage(pandaid, entries)
        return self.publish(pandaid)

    def flush(self) -> int:
        """Publish whatever waits and can go now; returns how many jobs still wait."""
        for pandaid in sorted(self._waiting):
            self.publish(pandaid)
        return len(self._waiting)

    def adopt(self, pandaids: Iterable[int]) -> None:
        """Take over journals an earlier run left (for jobs that reached their final state)."""
        for pandaid in pandaids:  # two looks for a job that left nothing: a 100,000-job rerun loads the MDS
            journal = self.journal_path(pandaid)
            there = self._journal_kept(journal)
            older = self._taken_content(pandaid)
            if older is not NOTHING_TAKEN:  # a take-back a crash interrupted
                self._merge_in(pandaid, older)
                there = journal.exists()
            if not there:
                continue
            if not journal.is_file():  # renamed to the dump, it would hand Harvester a directory to read
                log.error("%s is not a regular file: not taken as staged declarations", journal)
                continue
            if any(_same_file(journal, dump) for dump in self.dumps_seen(pandaid)):
                journal.unlink(missing_ok=True)  # published just before a crash
            else:
                self._waiting.add(pandaid)

    @staticmethod
    def _journal_kept(journal: Path) -> bool:
        """Whether a journal is there, once one a kill left half-written is dropped. A new journal is written
        in place (``stage``): part of one must neither go to Harvester nor stop a take-back. Its entries were
        never counted declared (an event service job's ranges run again)."""
        try:
            content = read_json(journal)
        except FileNotFoundError:
            return False
        except ValueError as error:
            content = error
        except OSError:  # not a file: looked at by the caller
            return True
        if _is_dump(content):
            return True
        log.warning("%s was left half-written by an earlier run that was killed (%s): dropped", journal, content)
        journal.unlink(missing_ok=True)
        return False

    def discard(self, pandaid: int) -> None:
        """Forget a job's unpublished entries (it will run again)."""
        self.journal_path(pandaid).unlink(missing_ok=True)
        self._staged.discard(pandaid)
        self._waiting.discard(pandaid)

    @property
    def waiting(self) -> set[int]:
        return set(self._waiting)

    def journal_path(self, pandaid: int) -> Path:
        return self.access_point.path(pandaid, self.access_point.files.pending_declarations)

    def _taken_path(self, pandaid: int) -> Path:
        """Where a dump taken back from Harvester lies until its entries are in the journal (hidden)."""
        journal = self.journal_path(pandaid)
        return journal.with_name(journal.name + TAKEN_SUFFIX)

    def _dump(self, pandaid: int) -> Path:
        return self.access_point.path(pandaid, self.access_point.files.event_status)

    def dumps_seen(self, pandaid: int) -> list[Path]:
        """The dump and the copies Harvester renamed it to (``.read``, ``.read.<time>``)."""
        dump = self._dump(pandaid)
        return [dump, *dump.parent.glob(dump.name + ".read*")]

    def _has_journal(self, pandaid: int) -> bool:
        """Whether this run wrote the job's journal (else one on disk is an earlier run's, stale)."""
        return pandaid in self._waiting or pandaid in self._staged

    def _journal(self, pandaid: int) -> list[dict[str, Any]]:
        if not self._has_journal(pandaid):
            return []
        try:
            return list(read_json(self.journal_path(pandaid)).get(str(pandaid), []))
        except FileNotFoundError:
            return []


def _is_dump(content: Any) -> bool:
    return isinstance(content, dict) and all(isinstance(entries, list) for entries in content.values())


def _merged(older: dict[str, list], newer: dict[str, list]) -> dict[str, list]:
    """``older``'s entries, then those of ``newer`` not among them (an entry is never declared twice)."""
    merged = {key: list(entries) for key, entries in older.items()}
    for key, entries in newer.items():
        seen = {json_bytes(entry) for entry in merged.get(key, [])}
        merged.setdefault(key, []).extend(entry for entry in entries if json_bytes(entry) not in seen)
    return merged


def _written_new(path: Path, content: Any) -> bool:
    """Write ``content`` as JSON to a file that does not exist yet; False if one does."""
    try:
        write_new(path, json_bytes(content))
    except FileExistsError:
        return False
    return True


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False
