"""A replica's sync identity, and the checks that keep two files with one identity from losing each other's writes.

The sync engine names a replica by the client id in PATH-info. The remote keeps, per client id, the mark of the last
push it applied (`turso_sync_last_change_id`: pull generation, change id), and a push skips every local change at or
below that mark, as does the replay of local changes after a pull. That is how a push retried after a crash is not
applied twice; it is also how two files with one client id (a copy, a restored backup, an image started twice) hand
out the same change ids and silently drop each other's rows. docs/design.md ("Copies, backups and images") says what
is detected and how; this module holds all of it, as blocking functions on paths, the blocking connection and the
engine's JSON requests:

- `open_identity` (on the connection's worker, before the driver opens the files): the sidecar PATH-identity against the
  files. It refuses a copy whose original is still at the recorded path, foreign or damaged metadata, and a replica
  refused before; it gives a copy made by `copy_replica_files` an identity of its own.
- `IdentityAtOpen.confirm` (right after the driver's open, before a bootstrap): refuses a replica whose PATH-info is
  gone while it holds local changes, and records the sidecar; returns the connection's `ReplicaGuard`.
- `ReplicaGuard` (in the connection's sync turns): `watch` reads the engine's own requests (the mark it asks for before
  a push, the mark a push batch sets), `before_sync` tells the remote a fresh identity's floor, `before_apply` asks the
  remote for the mark before a pull's apply when local changes are pending.
- `copy_replica_files` and `recover_identity`: copy_replica() and recover_replica() (turso.lib_sync_aio) without the
  opening and the requests: a copy marked to mint its own identity, and a refused replica under a fresh identity, with
  the remote told which of its changes it already has.

The remote is asked with the statement the engine itself sends on every push (POST /v2/pipeline), so it works wherever
push works. The requests are built and judged here; the caller performs them through `Post`.
"""

import json
import os
import re
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, cast

from ..lib import Connection as BlockingConnection
from ..lib import DatabaseError, Error, OperationalError, ProgrammingError

# The sidecar beside the replica's files, PATH + this: what this module knows of the replica's identity (JSON).
SIDECAR_SUFFIX = "-identity"
SIDECAR_VERSION = 1
# The sidecar's size is a multiple of this, with room to spare, so that a write usually fits in place.
SIDECAR_ROOM = 512
# The engine's metadata file, PATH + this.
INFO_SUFFIX = "-info"

# The engine's table on the remote and its statements, as the engine sends them (sync/engine's
# database_sync_operations.rs); tests/test_replica_identity.py fails if a push no longer sends them.
MARK_TABLE = "turso_sync_last_change_id"
MARK_SQL = "SELECT pull_gen, change_id FROM turso_sync_last_change_id WHERE client_id = ?"
PUSH_MARK_SQL = (
    "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, ?, ?) ON CONFLICT(client_id) DO "
    "UPDATE SET pull_gen=excluded.pull_gen, change_id=excluded.change_id"
)
CREATE_MARK_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS turso_sync_last_change_id (client_id TEXT PRIMARY KEY, pull_gen INTEGER, change_id "
    "INTEGER)"
)
# A fresh identity's floor: the remote takes it as the mark of that client id, so a push sends only what lies above.
SEED_SQL = (
    "INSERT INTO turso_sync_last_change_id(client_id, pull_gen, change_id) VALUES (?, 0, ?) ON CONFLICT(client_id) DO "
    "NOTHING"
)
PIPELINE_PATH = "/v2/pipeline"
# The engine's header for the key of an encrypted remote database.
ENCRYPTION_KEY_HEADER = "x-turso-encryption-key"

# Why a replica was refused (ReplicaIdentityError.reason).
COPIED = "copied"
DIVERGED = "diverged"
METADATA_MISSING = "metadata_missing"
METADATA_DAMAGED = "metadata_damaged"
METADATA_FOREIGN = "metadata_foreign"

# How many marks of pushes that may have landed unconfirmed are kept (one per push batch sent since the last check).
UNCONFIRMED_KEPT = 16

# The remote's mark for one client id: (pull generation, change id), compared as a pair.
Mark = tuple[int, int]
# POST `body` (JSON) to `path` of the remote with `headers` added, and return the answer's body; raise turso.Error if
# it fails or the answer is not 2xx. The caller adds the token and the engine's other headers.
Post = Callable[[str, bytes, Sequence[tuple[str, str]]], bytes]

_UUID_TAIL = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class ReplicaIdentityError(DatabaseError):
    """A replica whose sync identity cannot be trusted: its files were copied or restored from an older copy while
    another copy pushes under the same identity, or its sync metadata (PATH-info) is gone or damaged. Pushing or
    pulling it could silently drop rows, so the open, push or pull is refused, and the local rows stay in the replica.
    The message says what happened and what to do; `recover_replica()` gives it an identity of its own."""

    # The replica's path, as the application gave it.
    path: str
    # Why: "copied", "diverged", "metadata_missing", "metadata_damaged" or "metadata_foreign".
    reason: str

    def __init__(self, message: str, *, path: str = "", reason: str = "") -> None:
        """`message` says what happened and what to do; `path` and `reason` are for code that reacts to it."""
        super().__init__(message)
        self.path = path
        self.reason = reason


@dataclass
class IdentityRecord:
    """The sidecar PATH-identity: the identity the replica had when this module last saw it, and what the remote
    should hold for it (JSON)."""

    # The client id in PATH-info; None in a copy made by copy_replica_files until its first open mints one.
    client_id: Optional[str] = None
    # The database file's real path, device and inode when it was last opened.
    path: str = ""
    device: int = 0
    inode: int = 0
    # The remote's mark for client_id as this file last knew it (None: no push under it yet); a mark at or below it is
    # this file's own.
    remote_mark: Optional[Mark] = None
    # Marks of push batches sent and not confirmed (a crash or a failed push may have landed them).
    unconfirmed: list[Mark] = field(default_factory=lambda: _no_marks())
    # The highest local change id at the first open since the remote was last checked: the changes at or below it are
    # shared with whatever copy the files came from (recovery leaves those to it).
    fork_floor: Optional[int] = None
    # A fresh identity whose floor the remote has not been told yet (the first sync tells it).
    seed: Optional[int] = None
    # copy_replica_files' mark: the first open mints a client id, with this floor.
    template_floor: Optional[int] = None
    # Set when a fork was found: every later open raises this (reason, message) until the replica is recovered.
    refused: Optional[tuple[str, str]] = None

    @classmethod
    def load(cls, sidecar: str) -> Optional["IdentityRecord"]:
        """The record in `sidecar`; None if there is none, or it cannot be read (it is then rebuilt)."""
        try:
            with open(sidecar, "rb") as file:
                data = json.loads(file.read())
            return cls(
                client_id=_optional_str(data.get("client_id")),
                path=str(data.get("path", "")),
                device=int(data.get("device", 0)),
                inode=int(data.get("inode", 0)),
                remote_mark=_optional_mark(data.get("remote_mark")),
                unconfirmed=[_mark(mark) for mark in data.get("unconfirmed", [])],
                fork_floor=_optional_int(data.get("fork_floor")),
                seed=_optional_int(data.get("seed")),
                template_floor=_optional_int(data.get("template_floor")),
                refused=_optional_refusal(data.get("refused")),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, AttributeError, KeyError):
            return None

    def save(self, sidecar: str) -> None:
        """Write the record to `sidecar`; OperationalError if it fails. See _overwrite for how."""
        data = {
            "version": SIDECAR_VERSION,
            "client_id": self.client_id,
            "path": self.path,
            "device": self.device,
            "inode": self.inode,
            "remote_mark": list(self.remote_mark) if self.remote_mark is not None else None,
            "unconfirmed": [list(mark) for mark in self.unconfirmed],
            "fork_floor": self.fork_floor,
            "seed": self.seed,
            "template_floor": self.template_floor,
            "refused": list(self.refused) if self.refused is not None else None,
        }
        try:
            _overwrite(sidecar, json.dumps(data, separators=(",", ":")).encode())
        except OSError as error:
            raise OperationalError(f"cannot record the replica's sync identity in {sidecar!r}: {error}") from error

    def same_file(self, stat: os.stat_result) -> bool:
        """Whether `stat` is the database file this record was made for (same device and inode)."""
        return (stat.st_dev, stat.st_ino) == (self.device, self.inode)

    def locate(self, real_path: str, stat: os.stat_result) -> None:
        """Record that the database file is now `real_path`, this device and inode."""
        self.path, self.device, self.inode = real_path, stat.st_dev, stat.st_ino


@dataclass(frozen=True)
class InfoFile:
    """What this module reads of the engine's PATH-info."""

    # The replica's sync identity.
    client_id: str
    # What the engine recorded after its last successful push: (pull generation, change id); (0, 0) after a pull.
    pushed_hint: Mark
    # The remote URL the engine saved, if any.
    remote_url: Optional[str]


def read_info(path: str) -> Optional[InfoFile]:
    """PATH-info of the replica at `path`; None if it does not exist. ReplicaIdentityError if it cannot be read as
    the engine's metadata (no client id)."""
    info_path = path + INFO_SUFFIX
    try:
        with open(info_path, "rb") as file:
            raw = file.read()
    except FileNotFoundError:
        return None
    except OSError:
        return None  # not readable here: the driver says why
    try:
        data = json.loads(raw)
        client_id = data["client_unique_id"]
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("no client id")
        hint = (int(data.get("last_pushed_pull_gen_hint") or 0), int(data.get("last_pushed_change_id_hint") or 0))
        remote_url = _json_field(data, "saved_configuration", "remote_url")
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ReplicaIdentityError(
            f"cannot open sync replica {path!r}: its sync metadata {info_path!r} is damaged ({_short(error)}): it no "
            "longer says under which identity the replica pushed, so a push could send changes the remote already has "
            f"again, or skip some. Nothing was changed. Restore {info_path!r} from the backup the database came "
            f"with; or {_RECOVER_ADVICE.format(path=path)}",
            path=path,
            reason=METADATA_DAMAGED,
        ) from None
    return InfoFile(client_id, hint, remote_url if isinstance(remote_url, str) else None)


class IdentityAtOpen:
    """What `open_identity` found in the files, before the driver opened them; `confirm` finishes the check once the
    replica is open."""

    def __init__(
        self, path: str, record: Optional[IdentityRecord], info: Optional[InfoFile], main_had_data: bool, moved: bool
    ) -> None:
        """The state `open_identity` found (see there)."""
        self.path = path
        self.record = record
        self.info = info
        self.main_had_data = main_had_data
        self.moved = moved

    def confirm(self, blocking: BlockingConnection, encryption_key: Optional[str] = None) -> Optional["ReplicaGuard"]:
        """On the connection's worker, after the driver's open and before a bootstrap: refuse a replica whose PATH-info
        was gone while it holds local changes (the bootstrap would push them again under a new identity), record
        the sidecar, and return the connection's guard (None for an in-memory replica). `encryption_key` is the
        remote's, which the guard's own requests carry as the engine's do."""
        path = self.path
        if path == MEMORY_PATH:
            return None
        if self.info is None and self.main_had_data:
            changes = pushable_changes(blocking)
            if changes:
                raise ReplicaIdentityError(
                    f"cannot open sync replica {path!r}: its sync metadata {path + INFO_SUFFIX!r} is missing, and the "
                    f"database holds {changes} local change(s) the remote may or may not have. Opening it would start "
                    "a new identity and push them all again (rows doubled), or pull over the ones not pushed yet. "
                    f"Nothing was changed. Restore {path + INFO_SUFFIX!r} from the backup the database came with; or "
                    f"{_RECOVER_ADVICE.format(path=path)}",
                    path=path,
                    reason=METADATA_MISSING,
                )
        info = read_info(path)
        if info is None:
            return None  # the driver opened without metadata (it always writes it): nothing to guard
        highest = highest_change_id(blocking)
        record = self.record
        stat = os.stat(path)
        real_path = os.path.realpath(path)
        if record is not None and record.client_id == info.client_id:
            self._refuse_a_rewound_database(blocking, record, highest)
        if record is None or record.client_id != info.client_id:
            # A new replica, one this module never saw (made before it, or by another binding), or one whose lost
            # PATH-info held no local change. An adopted replica's remote mark is bounded by its pull generation:
            # a mark of an earlier generation is harmless, one of its own generation must be its own push.
            adopted = self.info is not None
            mark = (local_pull_generation(blocking, info.client_id), 0) if adopted else None
            record = IdentityRecord(client_id=info.client_id, remote_mark=mark, fork_floor=highest)
            record.locate(real_path, stat)
            record.save(path + SIDECAR_SUFFIX)
        elif self.moved or not record.same_file(stat) or record.path != real_path or record.fork_floor is None:
            if self.moved or record.fork_floor is None:
                # Moved or restored while closed: if it forked, it did so since its last open, at this change id.
                record.fork_floor = highest
            record.locate(real_path, stat)
            record.save(path + SIDECAR_SUFFIX)
        return ReplicaGuard(path, record, encryption_key)

    def _refuse_a_rewound_database(self, blocking: BlockingConnection, record: IdentityRecord, highest: int) -> None:
        # The marks this file pushed were of its change log: one of a later pull generation than the database's, or
        # above its highest change id in the same generation, means the database (and PATH-info) went back to an older
        # copy while PATH-identity stayed. Its next changes would reuse ids the remote has, and be skipped. The fork
        # is at this open: recovery leaves out what the database holds now, up to the remote's mark.
        generation = local_pull_generation(blocking, self.info.client_id if self.info is not None else "")
        pushed = [mark for mark in (record.remote_mark, *record.unconfirmed) if mark is not None]
        ahead = [mark for mark in pushed if mark[0] > generation or (mark[0] == generation and mark[1] > highest)]
        if not ahead:
            return
        path = self.path
        mark = max(ahead)
        message = (
            f"cannot open sync replica {path!r}: its database is older than its record of what it pushed "
            f"({path + SIDECAR_SUFFIX!r} says generation {mark[0]}, change {mark[1]} was pushed; the database's change "
            f"log is at generation {generation}, change {highest}): the database was restored from an older copy "
            f"without {path + SIDECAR_SUFFIX!r}. Its next changes would reuse change ids the remote has, and be "
            f"silently skipped. Nothing was changed in the database; the local rows stay. To go on, "
            f"{_RECOVER_ADVICE.format(path=path)}"
        )
        record.fork_floor = highest
        record.refused = (DIVERGED, message)
        record.save(path + SIDECAR_SUFFIX)
        raise ReplicaIdentityError(message, path=path, reason=DIVERGED)


class ReplicaGuard:
    """The identity checks of one open replica, in its sync turns (one operation at a time, so no lock is needed).

    A fork is found when the remote's mark for this replica's client id lies above everything this file knows it
    pushed: the mark it last knew (the sidecar), the engine's own record of its last push (PATH-info's hint), and the
    marks of pushes sent but not confirmed (a push that the remote applied just before a crash). Once found, every push
    and pull raises ReplicaIdentityError, and so does every later open, until the replica is recovered.
    """

    def __init__(self, path: str, record: IdentityRecord, encryption_key: Optional[str] = None) -> None:
        """The guard of the replica at `path`, whose sidecar holds `record`; `encryption_key` is the remote's."""
        self.path = path
        self.record = record
        self.client_id = record.client_id or ""
        self.sidecar = path + SIDECAR_SUFFIX
        # The headers of the guard's own requests to /v2/pipeline (the engine's, for its statements there).
        self.headers = pipeline_headers(encryption_key)
        # Checks of the remote's mark since the open (for tests and measurements).
        self.remote_checks = 0

    # --- the calls of the sync operations, with blocking requests -------------------------------------------------

    def before_sync(self, post: Post) -> None:
        """Before every push and pull: raise the refusal if a fork was found; tell the remote a fresh identity's floor
        (one request, once per fresh identity)."""
        self._check_refused()
        body = self.seed_request()
        if body is not None:
            self.seed_answered(post(PIPELINE_PATH, body, self.headers))

    def before_apply(self, pending_changes: int, post: Post) -> None:
        """After a pull fetched changes and before they are applied: take in the engine's record of this file's last
        push (the apply resets it); with local changes pending, ask the remote for this client id's mark (one
        request), since the apply drops every local change at or below it."""
        body = self.apply_check_request(pending_changes)
        if body is not None:
            self.judge_mark_answer(post(PIPELINE_PATH, body, self.headers))

    def watch(self, method: str, path: str, body: Optional[bytes]) -> Optional[Callable[[int, bytes], None]]:
        """Before the engine sends a request: for its query of this client id's mark (the first request of a push),
        return the check of its answer, which raises ReplicaIdentityError for a fork; for a push batch, record the
        mark it sets as unconfirmed first (written before it is sent, so a crash after the remote applied it is no
        false alarm). None for every other request."""
        if not self.watches(method, path, body) or body is None:
            return None
        self._check_refused()
        batch_mark = _push_batch_mark(body, self.client_id)
        if batch_mark is not None:
            # The one write of a push: the record as it stands (a mark promoted since is saved with it).
            record = self.record
            if batch_mark not in record.unconfirmed:
                record.unconfirmed = [*record.unconfirmed, batch_mark][-UNCONFIRMED_KEPT:]
            record.save(self.sidecar)
            return None
        if _asks_mark_of(body, self.client_id):
            return self._check_mark_answer
        return None

    # --- the same without performing requests: for a caller that sends them itself (say on its event loop) --------

    def watches(self, method: str, path: str, body: Optional[bytes]) -> bool:
        """Whether `watch` has anything to do with this request of the engine's (cheap: no file IO), so that a caller
        running `watch` elsewhere (a worker thread, for its file write) can skip the others."""
        return method == "POST" and path == PIPELINE_PATH and bool(body) and MARK_TABLE.encode() in (body or b"")

    def sync_request(self) -> Optional[bytes]:
        """before_sync() without its request: raise the refusal, and return the body to POST to /v2/pipeline first (its
        answer for seed_answered), or None."""
        self._check_refused()
        return self.seed_request()

    def seed_request(self) -> Optional[bytes]:
        """The body to POST to /v2/pipeline before the first sync of a fresh identity, or None once the remote knows
        its floor."""
        if self.record.seed is None:
            return None
        return seed_request(self.client_id, self.record.seed)

    def seed_answered(self, answer: bytes) -> None:
        """Record the remote's answer to seed_request(): the floor is now the remote's mark of this identity."""
        seed = self.record.seed
        if seed is None:
            return
        check_seed_answer(answer)
        self.record.remote_mark = _highest(self.record.remote_mark, (0, seed))
        self.record.seed = None
        self.record.save(self.sidecar)

    def apply_check_request(self, pending_changes: int) -> Optional[bytes]:
        """before_apply() without its request: raise the refusal, take in the engine's record of the last push, and
        return the body to POST to /v2/pipeline (its answer for judge_mark_answer), or None if no check is needed."""
        self._check_refused()
        self._take_push_record()
        if pending_changes <= 0:
            return None  # the apply cannot drop a change: there is none
        return mark_request(self.client_id)

    def judge_mark_answer(self, answer: bytes) -> None:
        """Judge the remote's answer to apply_check_request()'s body: raise ReplicaIdentityError for a fork, else
        record the mark."""
        self.remote_checks += 1
        self._judge(parse_mark_answer(answer))

    def _check_mark_answer(self, status: int, answer: bytes) -> None:
        # The engine's own query, answered: judged only when it is an answer (the engine reports anything else).
        if not 200 <= status < 300:
            return
        try:
            mark = parse_mark_answer(answer)
        except Error:
            return
        self.remote_checks += 1
        self._judge(mark)

    def _check_refused(self) -> None:
        # A new error each time: one raised again would carry the frames of every caller it went through before.
        refused = self.record.refused
        if refused is not None:
            raise ReplicaIdentityError(refused[1], path=self.path, reason=refused[0])

    def _judge(self, mark: Optional[Mark]) -> None:
        # A mark at or below the one this file knows, or one of its unconfirmed pushes, is its own; anything else is a
        # fork. The sidecar is written only when the first check since the open clears the fork floor: a promoted
        # mark is saved with the next push's (until then the unconfirmed mark on disk stands for it).
        record = self.record
        if mark is None or (record.remote_mark is not None and mark <= record.remote_mark):
            record.unconfirmed = []  # not applied: the remote's mark is below them
        elif mark in record.unconfirmed:
            record.remote_mark, record.unconfirmed = mark, []  # a push of this file, applied unconfirmed
        else:
            self._take_push_record()  # the engine's record of a push made without this module (another binding)
            if record.remote_mark is None or mark > record.remote_mark:
                self._refuse(mark, record.remote_mark)
        if record.fork_floor is not None:
            record.fork_floor = None
            record.save(self.sidecar)

    def _take_push_record(self) -> None:
        # Raise the known mark to the engine's record of this file's last push (PATH-info's hint), saving if it moved.
        info = read_info(self.path)
        record = self.record
        if info is None or info.client_id != self.client_id:
            return
        mark = _highest(record.remote_mark, info.pushed_hint)
        if mark != record.remote_mark:
            record.remote_mark = mark
            record.unconfirmed = [pushed for pushed in record.unconfirmed if mark is None or pushed > mark]
            record.save(self.sidecar)

    def _refuse(self, mark: Mark, known: Optional[Mark]) -> None:
        path = self.path
        knew = f"generation {known[0]}, change {known[1]}" if known is not None else "no push at all"
        message = (
            f"sync replica {path!r} diverged from its remote: the remote holds changes pushed under this replica's "
            f"sync identity ({self.client_id!r}, up to generation {mark[0]}, change {mark[1]}) that this file did not "
            f"push (it knows of {knew}). Its files were restored from an older copy, or another copy of them (a copy "
            "on another path or machine, an image started twice) pushed. Pushing or pulling now would silently drop "
            f"local changes, so neither runs; the local rows stay in {path!r}. Close the connection and "
            f"{_RECOVER_ADVICE.format(path=path)}"
        )
        self.record.refused = (DIVERGED, message)
        try:
            self.record.save(self.sidecar)
        except Error:
            pass  # the refusal stands for this connection; the next open finds the fork again
        self._check_refused()


def open_identity(path: str) -> IdentityAtOpen:
    """On the connection's worker, before the driver opens the replica at `path`: check its sidecar against its files.

    Raises ReplicaIdentityError for a copy whose original is still at the recorded path (both would push under one
    identity), for PATH-info that is damaged or belongs to another replica, and for a replica refused before. A copy
    made by copy_replica_files gets its own client id here. Changes nothing else."""
    if path == MEMORY_PATH:
        return IdentityAtOpen(path, None, None, False, False)
    sidecar = path + SIDECAR_SUFFIX
    record = IdentityRecord.load(sidecar)
    info = read_info(path)
    main_had_data = _size(path) > 0
    if record is not None and record.refused is not None and info is not None and info.client_id == record.client_id:
        raise ReplicaIdentityError(
            f"{record.refused[1]} (found before; this replica stays refused until it is recovered)",
            path=path,
            reason=record.refused[0],
        )
    if record is not None and record.template_floor is not None and info is not None:
        # A copy made by copy_replica_files, opened for the first time: an identity of its own, whose floor (every
        # change the copy came with) the remote is told at the first sync. The sidecar first: an open interrupted
        # between the two writes finishes the second (below).
        record = IdentityRecord(client_id=fresh_client_id(info.client_id), seed=record.template_floor)
        record.save(sidecar)
    if record is None or info is None:
        return IdentityAtOpen(path, record, info, main_had_data, moved=False)
    if record.client_id is not None and record.client_id != info.client_id and record.seed is not None:
        # A new identity decided (a copy's first open, or a recovery) whose PATH-info was not rewritten yet.
        rewrite_info(path, record.client_id)
        return IdentityAtOpen(path, record, read_info(path), main_had_data, moved=True)
    if record.client_id != info.client_id:
        raise ReplicaIdentityError(
            f"cannot open sync replica {path!r}: its sync metadata {path + INFO_SUFFIX!r} belongs to another replica "
            f"(client id {info.client_id!r}; this one pushed as {record.client_id!r}): it was copied in from another "
            "replica or replaced by another program. Pushing under it would skip or double changes. Nothing was "
            f"changed. Put back the {path + INFO_SUFFIX!r} that came with this database; or "
            f"{_RECOVER_ADVICE.format(path=path)}",
            path=path,
            reason=METADATA_FOREIGN,
        )
    try:
        stat = os.stat(path)
    except OSError:
        return IdentityAtOpen(path, record, info, main_had_data, moved=False)  # the driver says what is wrong
    real_path = os.path.realpath(path)
    if record.same_file(stat):
        return IdentityAtOpen(path, record, info, main_had_data, moved=False)  # the same file (maybe renamed)
    if record.path != real_path and _is_the_original(record, info.client_id):
        raise ReplicaIdentityError(
            f"cannot open sync replica {path!r}: it is a copy of the replica {record.path!r}, which is still there "
            f"under the same sync identity ({info.client_id!r}). Two replicas with one identity silently drop each "
            "other's pushes, so the copy is not opened; nothing was changed. Its rows not pushed yet are the "
            "original's to push. To keep the copy as a replica of its own, "
            f"{_RECOVER_ADVICE.format(path=path)}. To make copies, use turso.lib_sync_aio.copy_replica()",
            path=path,
            reason=COPIED,
        )
    # Moved to another file system, or restored as new files: the remote's mark decides at the first sync.
    return IdentityAtOpen(path, record, info, main_had_data, moved=True)


# --- the remote's mark: requests and answers -------------------------------------------------------------------------


def mark_request(client_id: str) -> bytes:
    """The /v2/pipeline body that asks the remote for `client_id`'s mark (the engine's own statement)."""
    return _pipeline([(MARK_SQL, [_text(client_id)])])


def seed_request(client_id: str, floor: int) -> bytes:
    """The /v2/pipeline body that gives a fresh `client_id` the mark (0, floor), unless it has one."""
    return _pipeline([(CREATE_MARK_TABLE_SQL, []), (SEED_SQL, [_text(client_id), _integer(floor)])])


def parse_mark_answer(answer: bytes) -> Optional[Mark]:
    """The mark in the remote's answer to mark_request() or to the engine's query; None if it has none (no row, or no
    table yet). OperationalError if the answer is not one."""
    rows = _batch_rows(answer, 1)[0]
    if not rows:
        return None
    try:
        return int(rows[0][0]["value"]), int(rows[0][1]["value"])
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise OperationalError(f"unexpected answer from the remote to a sync mark query: {_short(error)}") from None


def check_seed_answer(answer: bytes) -> None:
    """Raise OperationalError unless the remote's answer to seed_request() says both statements ran."""
    _batch_rows(answer, 2)


def pipeline_headers(encryption_key: Optional[str]) -> list[tuple[str, str]]:
    """The headers of a request to /v2/pipeline, as the engine sends them (the token is the transport's)."""
    headers = [("content-type", "application/json")]
    if encryption_key:
        headers.append((ENCRYPTION_KEY_HEADER, encryption_key))
    return headers


# --- the local database ----------------------------------------------------------------------------------------------


def highest_change_id(blocking: BlockingConnection) -> int:
    """The highest change id in the replica's change log (0 if it has none)."""
    return _scalar(blocking, "SELECT coalesce(max(change_id), 0) FROM turso_cdc", ())


def pushable_changes(blocking: BlockingConnection) -> int:
    """Local changes in the change log that a push would send (rows and schema of the application's tables)."""
    return _scalar(
        blocking,
        "SELECT count(*) FROM turso_cdc WHERE table_name IS NOT NULL AND table_name != ? AND change_type != 2",
        (MARK_TABLE,),
    )


def local_pull_generation(blocking: BlockingConnection, client_id: str) -> int:
    """The pull generation the replica's own copy of the marks holds for `client_id` (0 if none)."""
    return _scalar(blocking, f"SELECT coalesce(max(pull_gen), 0) FROM {MARK_TABLE} WHERE client_id = ?", (client_id,))


# --- new identities --------------------------------------------------------------------------------------------------


def fresh_client_id(previous: str) -> str:
    """A new client id in the engine's form (client name, a dash, a UUID), with `previous`'s client name."""
    name = _UUID_TAIL.sub("", previous) if _UUID_TAIL.search(previous) else "turso-sync-py"
    return f"{name}-{uuid.uuid4()}"


def rewrite_info(path: str, client_id: str) -> None:
    """Give the replica's PATH-info `client_id`, and forget the engine's record of pushes made under the old one."""
    info_path = path + INFO_SUFFIX
    with open(info_path, "rb") as file:
        data = json.loads(file.read())
    data["client_unique_id"] = client_id
    data["last_pushed_pull_gen_hint"] = 0
    data["last_pushed_change_id_hint"] = 0
    if "last_pushed_replay_floor_change_id_hint" in data:
        data["last_pushed_replay_floor_change_id_hint"] = 0
    _write_atomically(info_path, json.dumps(data, separators=(",", ":")).encode())


def copy_replica_files(source: str, destination: str, highest: int) -> list[str]:
    """Copy the files of the replica at `source` (open, idle, its file lock held by the caller) to `destination`,
    marked to take an identity of its own at its first open, with `highest` (the source's highest change id) as its
    floor. Returns the files written. ValueError if `destination` has replica files already."""
    if _size(destination) >= 0 or os.path.exists(destination + INFO_SUFFIX):
        raise ValueError(f"cannot copy the replica to {destination!r}: a file is there already")
    written: list[str] = []
    try:
        for name in _replica_file_names(source):
            target = destination + name[len(source) :]
            shutil.copyfile(name, target)
            written.append(target)
        IdentityRecord(template_floor=highest).save(destination + SIDECAR_SUFFIX)
        written.append(destination + SIDECAR_SUFFIX)
    except BaseException:
        for target in written:
            try:
                os.remove(target)
            except OSError:
                pass
        raise
    return written


@dataclass(frozen=True)
class ReplicaRecovery:
    """What `recover_replica()` did to a refused replica: the identity it had, the one it has now, and the floor: its
    local changes up to that change id are left to the remote (it has them, or the copy they came from pushes them);
    those above it are pushed under the new identity."""

    # The client id the replica shared with another copy (or lost).
    previous_client_id: str
    # The replica's own client id from now on.
    client_id: str
    # Local changes with a change id up to this one are not pushed again.
    floor: int


def recover_identity(
    path: str, open_replica: Callable[[], BlockingConnection], post: Post, encryption_key: Optional[str] = None
) -> ReplicaRecovery:
    """Give the closed replica at `path` an identity of its own, and tell the remote (through `post`) which of its
    local changes it already has, so that the next push sends only the others. `open_replica` opens it with the
    driver, without a bootstrap (which writes a fresh PATH-info if there is none). Returns what was done; the caller
    holds the replica's path claim, and pushes afterwards.

    The floor: a copy refused at its open made no change of its own (all it has belongs to its original). Otherwise
    the remote holds this file's changes up to its mark for the old identity, when that mark is of the replica's
    current pull generation; and a change above the fork (the first open after a restore or a copy, as recorded) is
    this file's own even below that mark.
    """
    if _size(path) <= 0:
        raise ProgrammingError(f"cannot recover {path!r}: there is no replica database there")
    sidecar = path + SIDECAR_SUFFIX
    record = IdentityRecord.load(sidecar)
    if record is not None and record.template_floor is not None:
        raise ProgrammingError(f"{path!r} is a copy made by copy_replica() and was never opened: open it instead")
    reason, info = _why_refused(path, record)
    if reason in (METADATA_DAMAGED, METADATA_FOREIGN):
        # The driver cannot use it (damaged), or it describes another database (foreign): set aside, not deleted.
        os.replace(path + INFO_SUFFIX, path + INFO_SUFFIX + ".set-aside")
        info = None
    if info is not None and reason != METADATA_FOREIGN:
        previous = info.client_id
    elif record is not None and record.client_id is not None:
        previous = record.client_id
    else:
        raise ReplicaIdentityError(
            f"cannot recover {path!r}: nothing records the identity it pushed under (its sync metadata "
            f"{path + INFO_SUFFIX!r} and its sidecar {sidecar!r} are both gone), so which of its local changes the "
            "remote has cannot be told. Restore its files from a backup",
            path=path,
            reason=METADATA_MISSING,
        )
    blocking = open_replica()
    try:
        generation = local_pull_generation(blocking, previous)
        highest = highest_change_id(blocking)
    finally:
        blocking.close()
        del blocking
    headers = pipeline_headers(encryption_key)
    remote = parse_mark_answer(post(PIPELINE_PATH, mark_request(previous), headers))
    floor = _recovery_floor(reason, remote, generation, highest, record)
    if info is not None:
        client_id = fresh_client_id(previous)
    else:
        written = read_info(path)  # the driver's fresh one, with a client id of its own
        if written is None:
            raise OperationalError(f"cannot recover {path!r}: the driver wrote no sync metadata")
        client_id = written.client_id
    # The sidecar first: an open interrupted before PATH-info is rewritten finishes it (see open_identity).
    record = IdentityRecord(client_id=client_id, seed=floor)
    record.locate(os.path.realpath(path), os.stat(path))
    record.save(sidecar)
    if info is not None:
        rewrite_info(path, client_id)
    guard = ReplicaGuard(path, record, encryption_key)
    guard.before_sync(post)
    return ReplicaRecovery(previous, client_id, floor)


# --- helpers ---------------------------------------------------------------------------------------------------------

# The path that the driver opens as an in-memory database: no files, no identity to keep.
MEMORY_PATH = ":memory:"

# The advice at the end of every refusal.
_RECOVER_ADVICE = (
    "run `await turso.lib_sync_aio.recover_replica({path!r}, remote_url, auth_token=...)` once: it gives the replica "
    "an identity of its own and pushes only the changes the remote does not have (docs/troubleshooting.md, "
    '"Copies, backups and images")'
)


def _why_refused(path: str, record: Optional[IdentityRecord]) -> tuple[str, Optional[InfoFile]]:
    # Why the replica at `path` needs recovering (a reason constant), and its PATH-info if it can be read.
    try:
        info = read_info(path)
    except ReplicaIdentityError:
        return METADATA_DAMAGED, None
    if info is None:
        return METADATA_MISSING, None
    if record is not None and record.refused is not None:
        return record.refused[0], info
    try:
        open_identity(path)
    except ReplicaIdentityError as error:
        return error.reason, info
    return DIVERGED, info


def _recovery_floor(
    reason: str, remote: Optional[Mark], generation: int, highest: int, record: Optional[IdentityRecord]
) -> int:
    # See recover_identity.
    if reason == COPIED:
        return highest
    if remote is None or remote[0] < generation:
        return 0  # nothing of the current pull generation reached the remote under the old identity
    if reason != DIVERGED:
        return min(remote[1], highest) if remote[0] == generation else 0  # lost metadata: no fork, its own pushes
    fork = _fork_floor(record, generation)
    if remote[0] > generation:
        return min(fork, highest)
    return min(remote[1], fork, highest)


def _fork_floor(record: Optional[IdentityRecord], local_generation: int) -> int:
    # The highest change id this file shares with the copy it forked from, as well as can be told (see fork_floor).
    if record is None:
        return 0
    if record.fork_floor is not None:
        return record.fork_floor
    mark = record.remote_mark
    return mark[1] if mark is not None and mark[0] == local_generation else 0


def _is_the_original(record: IdentityRecord, client_id: str) -> bool:
    # Whether the recorded path still holds the file the record was made for, under the same identity.
    try:
        stat = os.stat(record.path)
    except OSError:
        return False
    if not record.same_file(stat):
        return False
    try:
        original = read_info(record.path)
    except ReplicaIdentityError:
        return True
    return original is not None and original.client_id == client_id


def _replica_file_names(path: str) -> list[str]:
    # The files to copy: the database and the engine's files beside it; not the sidecar, nor temporary writes.
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    names: list[str] = []
    for entry in sorted(os.listdir(directory)):
        if entry == base or (entry.startswith(base + "-") and not entry.startswith(base + SIDECAR_SUFFIX)):
            if ".tmp." not in entry[len(base) :]:
                names.append(os.path.join(os.path.dirname(path), entry))
    return names


def _scalar(blocking: BlockingConnection, sql: str, parameters: Sequence[Any]) -> int:
    try:
        cursor = blocking.execute(sql, parameters)
    except Error as error:
        if "no such table" in str(error).lower():
            return 0
        raise
    try:
        row = cursor.fetchone()
    finally:
        cursor.close()
    return int(row[0]) if row is not None and row[0] is not None else 0


def _pipeline(statements: list[tuple[str, list[dict[str, str]]]]) -> bytes:
    # A pipeline of one batch, shaped as the engine shapes its own (which every remote that syncs accepts).
    steps = [
        {"condition": None, "stmt": {"sql": sql, "sql_id": None, "args": args, "named_args": [], "want_rows": True}}
        for sql, args in statements
    ]
    return json.dumps({"baton": None, "requests": [{"type": "batch", "batch": {"steps": steps}}]}).encode()


def _batch_rows(answer: bytes, steps: int) -> list[list[Any]]:
    # The rows of each step of a one-batch pipeline answer; a step that failed on a missing marks table has none.
    try:
        result = json.loads(answer)["results"][0]
        if result.get("type") != "ok":
            raise OperationalError(f"the remote refused a sync mark statement: {result.get('error')}")
        batch = result["response"]["result"]
        rows: list[list[Any]] = []
        for index in range(steps):
            error = batch["step_errors"][index]
            if error is not None:
                if "no such table" in str(error.get("message", "")):
                    rows.append([])
                    continue
                raise OperationalError(f"the remote refused a sync mark statement: {error.get('message')}")
            rows.append(list(batch["step_results"][index]["rows"]))
        return rows
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        raise OperationalError(f"unexpected answer from the remote to a sync mark statement: {_short(error)}") from None


def _text(value: str) -> dict[str, str]:
    return {"type": "text", "value": value}


def _integer(value: int) -> dict[str, str]:
    return {"type": "integer", "value": str(value)}


def _asks_mark_of(body: bytes, client_id: str) -> bool:
    # Whether `body` is the engine's query of `client_id`'s mark (a batch of that one statement).
    if MARK_SQL.encode() not in body:
        return False
    try:
        steps = json.loads(body)["requests"][0]["batch"]["steps"]
        statement = steps[0]["stmt"]
        return len(steps) == 1 and statement["sql"] == MARK_SQL and statement["args"][0]["value"] == client_id
    except (ValueError, TypeError, KeyError, IndexError):
        return False


def _push_batch_mark(body: bytes, client_id: str) -> Optional[Mark]:
    # The mark a push batch sets for `client_id`: the arguments of its last statement on the marks. A batch can be
    # megabytes: only that statement is decoded, from where its object begins.
    needle = b'{"sql":' + json.dumps(PUSH_MARK_SQL).encode()
    start = body.rfind(needle)
    if start < 0:
        return None
    try:
        statement, _ = json.JSONDecoder().raw_decode(body[start:].decode("utf-8", "replace"))
        arguments = statement["args"]
        if arguments[0]["value"] != client_id:
            return None
        return int(arguments[1]["value"]), int(arguments[2]["value"])
    except (ValueError, TypeError, KeyError, IndexError):
        return None


def _highest(first: Optional[Mark], second: Optional[Mark]) -> Optional[Mark]:
    marks = [mark for mark in (first, second) if mark is not None and mark != (0, 0)]
    return max(marks) if marks else first


def _overwrite(target: str, content: bytes) -> None:
    # The sidecar is written once per push. Where the new content fits in the file, it is written over the old in one
    # pwrite, padded with spaces (which JSON ignores): no block is allocated, no rename journaled, a few microseconds
    # where a new file renamed over the old costs a journal commit (0.1 to 0.4 ms of processor time, measured; 1.7 ms
    # on a busy machine). One write of at most a page is whole or absent after a process is killed; after a power loss
    # a torn sidecar reads as none, and the replica is then adopted again (docs/design.md). Where it does not fit, the
    # file is written anew, padded to leave room, and renamed over it, as the driver writes PATH-info.
    try:
        descriptor: Optional[int] = os.open(target, os.O_WRONLY)
    except FileNotFoundError:
        descriptor = None
    if descriptor is not None:
        try:
            size = os.fstat(descriptor).st_size
            if len(content) <= size:
                os.pwrite(descriptor, content.ljust(size), 0)
                return
        finally:
            os.close(descriptor)
    _write_atomically(target, content.ljust((len(content) // SIDECAR_ROOM + 2) * SIDECAR_ROOM))


def _write_atomically(target: str, content: bytes) -> None:
    # As the driver writes PATH-info: a temporary file beside the target, renamed over it.
    temporary = f"{target}.tmp.{os.getpid()}.{threading.get_ident()}"
    try:
        with open(temporary, "wb") as file:
            file.write(content)
        os.replace(temporary, target)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _size(path: str) -> int:
    # The file's size; -1 if it does not exist.
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _short(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


def _json_field(value: Any, *names: str) -> Any:
    # value[names[0]][names[1]]...; None where one is missing or not an object.
    for name in names:
        if not isinstance(value, dict):
            return None
        value = cast(dict[str, Any], value).get(name)
    return value


def _no_marks() -> list[Mark]:
    return []


def _mark(value: Any) -> Mark:
    return int(value[0]), int(value[1])


def _optional_mark(value: Any) -> Optional[Mark]:
    return _mark(value) if value is not None else None


def _optional_int(value: Any) -> Optional[int]:
    return int(value) if value is not None else None


def _optional_str(value: Any) -> Optional[str]:
    return str(value) if value is not None else None


def _optional_refusal(value: Any) -> Optional[tuple[str, str]]:
    return (str(value[0]), str(value[1])) if value is not None else None
