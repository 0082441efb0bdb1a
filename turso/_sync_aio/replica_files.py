"""A replica's files: the checks of `connect_sync`'s arguments, and of the files before the driver sees them.

A replica is its database file PATH and what the sync engine keeps beside it (PATH-wal, PATH-info, PATH-changes,
PATH-wal-revert). `check_replica_files` refuses damage that makes the driver spin or bootstrap over local changes;
docs/design.md ("Damaged files") says which, and how the header is read.
"""

import glob
import os
import struct
import urllib.parse
from typing import Callable, Optional, Union

from ..lib import DatabaseError, OperationalError, ProgrammingError

# The files of a replica PATH: the database, its write-ahead log, the sync engine's metadata, change log and revert log,
# and our identity sidecar (the driver's temporary writes remove themselves when they fail).
REPLICA_SUFFIXES = ("", "-wal", "-info", "-changes", "-wal-revert", "-identity")

# URL schemes the sync driver can reach; libsql:// and turso:// are rewritten to https:// by the driver.
REMOTE_SCHEMES = ("libsql", "turso", "https", "http")

# The SQLite file header: its first 16 bytes, its length, and where the page size and the size in pages are.
SQLITE_MAGIC = b"SQLite format 3\x00"
HEADER_BYTES = 100
_PAGE_SIZE = struct.Struct(">H")
_PAGE_SIZE_OFFSET = 16
_PAGE_COUNT = struct.Struct(">I")
_PAGE_COUNT_OFFSET = 28
# The write-ahead log: its header (magic, format, page size, checkpoint sequence, two salts; then a checksum) and each
# frame's header (page number, database size at commit, the two salts; then a checksum) before the page itself.
WAL_HEADER = struct.Struct(">IIIIII")
WAL_HEADER_BYTES = 32
WAL_MAGICS = (0x377F0682, 0x377F0683)
WAL_FRAME_HEADER = struct.Struct(">IIII")
WAL_FRAME_HEADER_BYTES = 24


# `object` parameters: the checks are for callers without a type checker.
def check_arguments(path: object, remote_url: object) -> None:
    """`connect_sync`'s path and remote URL, checked before anything is opened: TypeError, ValueError, ProgrammingError
    (a URL the sync driver cannot reach) or OperationalError (a missing directory), each saying what is wrong."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if "\0" in path:
        raise ValueError(f"path {path!r} contains a NUL character, which no file name can")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise OperationalError(f"cannot open sync replica {path!r}: directory {directory!r} does not exist")
    if remote_url is None:
        return
    if callable(remote_url):
        # The pinned driver puts remote_url into the native replica config, which takes only a string.
        raise ProgrammingError(
            "remote_url as a callable is not supported by the pinned driver (pyturso 0.8.3 fails with \"'function' "
            "object is not an instance of 'str'\"); pass the URL as a string, and use a callable auth_token to "
            "refresh credentials per request"
        )
    if not isinstance(remote_url, str):
        raise TypeError(f"remote_url must be a str or None, not {type(remote_url).__name__}")
    try:
        parts = urllib.parse.urlsplit(remote_url)
    except ValueError as error:
        raise ProgrammingError(f"remote_url {remote_url!r} is not a valid URL: {error}") from None
    if parts.scheme not in REMOTE_SCHEMES or not parts.hostname:
        raise ProgrammingError(
            f"remote_url {remote_url!r} is not a sync URL: expected libsql://HOST, https://HOST or http://HOST:PORT"
        )


def replica_files(path: str) -> set[str]:
    """The database file and the files the sync engine keeps beside it (-wal, -info, -changes, temporary writes),
    those that exist now. It lists the directory: for messages; `known_replica_files` is the cheap one."""
    pattern = glob.escape(path)
    return {*glob.glob(pattern), *glob.glob(pattern + "-*"), *glob.glob(pattern + ".tmp.*")}


def known_replica_files(path: str) -> set[str]:
    """The replica's files of the names that the driver and this module create (REPLICA_SUFFIXES), those that exist
    now: what an open notes before it starts, to remove what it created if it fails. It looks up each name instead of
    listing the directory, which a folder of a thousand replicas would make slow."""
    return {path + suffix for suffix in REPLICA_SUFFIXES if os.path.lexists(path + suffix)}


def check_replica_files(path: str) -> None:
    """Refuse, with `turso.DatabaseError`, a replica whose files the driver would spin on or bootstrap over (see the
    module's docstring); return at once for a new replica or healthy files. Reads a header or two, changes nothing."""
    main_size = _size(path)
    if main_size is None:
        # A new replica; or PATH-info without PATH, which the driver refuses clearly ("main DB file doesn't exists,
        # but metadata is").
        return
    info_path = path + "-info"
    info_size = _size(info_path)
    if main_size == 0:
        if info_size is not None:
            raise DatabaseError(
                f"cannot open sync replica {path!r}: the database file is empty (0 bytes), but the sync metadata "
                f"{info_path!r} beside it says it is a replica; opening it would bootstrap a new, empty database over "
                f"it and lose the changes not pushed yet. {_WHAT_TO_DO.format(path=path, files=_listed(path))}"
            )
        return
    if info_size == 0:
        raise DatabaseError(
            f"cannot open sync replica {path!r}: its sync metadata {info_path!r} is empty (0 bytes); opening it would "
            "bootstrap the remote's database over the local one and lose the changes not pushed yet. Restore "
            f"{info_path!r} from a backup, or: {_WHAT_TO_DO.format(path=path, files=_listed(path))}"
        )
    try:
        with open(path, "rb") as database:
            header = database.read(HEADER_BYTES)
    except OSError:
        return  # not readable here (a directory, no permission): the driver says why
    page_size = _page_size(header)
    if page_size is None:
        # Not a database, or a header cut short: the driver says so ("file is not a database", "short read on page 1").
        return
    (page_count,) = _PAGE_COUNT.unpack_from(header, _PAGE_COUNT_OFFSET)
    if page_count == 0 or main_size >= page_count * page_size:
        return
    # The first page the file does not hold in full, and the last one its header counts.
    first_missing = main_size // page_size + 1
    logged = _pages_in_wal(path + "-wal", page_size)
    if logged is None:
        return  # a log that cannot be read here: no telling what it holds
    missing = next((page for page in range(first_missing, page_count + 1) if page not in logged), None)
    if missing is None:
        return
    raise DatabaseError(
        f"cannot open sync replica {path!r}: the database file is {main_size} bytes, but its header says "
        f"{page_count} pages of {page_size} bytes ({page_count * page_size} bytes), and page {missing} is neither in "
        f"the file nor in its write-ahead log {path + '-wal'!r}: the file was cut short (a copy or a restore that did "
        f"not finish, a disk that filled or failed). {_WHAT_TO_DO.format(path=path, files=_listed(path))}"
    )


def replica_files_held_open(path: str) -> bool:
    """Whether this process holds a file descriptor of one of the replica's files now; False where the process's
    descriptors cannot be listed (only Linux's /proc/self/fd is read)."""
    try:
        descriptors = os.listdir(_OWN_DESCRIPTORS)
    except OSError:
        return False
    prefix = os.path.realpath(path)
    for descriptor in descriptors:
        try:
            target = os.readlink(os.path.join(_OWN_DESCRIPTORS, descriptor))
        except OSError:
            continue  # closed since the listing
        if target == prefix or target.startswith((prefix + "-", prefix + ".tmp.")):
            return True
    return False


# Where Linux lists this process's open file descriptors, as links to their files.
_OWN_DESCRIPTORS = "/proc/self/fd"

# How to get going again after check_replica_files refused a replica.
_WHAT_TO_DO = (
    "Nothing was changed. Restore {path!r} from a backup; or, to start over from the remote (local changes not pushed "
    "yet are lost), remove {files}"
)


def _listed(path: str) -> str:
    # The replica's files that exist, for the advice to remove them.
    return ", ".join(repr(name) for name in sorted(replica_files(path)))


def _size(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _page_size(header: bytes) -> Optional[int]:
    # The page size of a SQLite header, or None if `header` is not one (a power of two from 512 to 65536).
    if len(header) < HEADER_BYTES or not header.startswith(SQLITE_MAGIC):
        return None
    (raw,) = _PAGE_SIZE.unpack_from(header, _PAGE_SIZE_OFFSET)
    page_size = 65536 if raw == 1 else raw
    if page_size < 512 or page_size & (page_size - 1):
        return None
    return page_size


def _pages_in_wal(wal_path: str, page_size: int) -> Optional[set[int]]:
    # The pages that frames of the current write-ahead log hold (frames whose salts are the header's), whether they
    # were committed or not: a generous reading, so that a healthy replica is never refused. None if the log exists
    # but cannot be read.
    try:
        wal = open(wal_path, "rb")
    except FileNotFoundError:
        return set()
    except OSError:
        return None
    pages: set[int] = set()
    with wal:
        header = wal.read(WAL_HEADER_BYTES)
        if len(header) < WAL_HEADER_BYTES:
            return pages
        magic, _format, wal_page_size, _sequence, salt_1, salt_2 = WAL_HEADER.unpack_from(header)
        if magic not in WAL_MAGICS or wal_page_size != page_size:
            return pages
        frame_bytes = WAL_FRAME_HEADER_BYTES + page_size
        offset = WAL_HEADER_BYTES
        while True:
            wal.seek(offset)
            frame_header = wal.read(WAL_FRAME_HEADER_BYTES)
            if len(frame_header) < WAL_FRAME_HEADER_BYTES:
                return pages
            page, _database_size, frame_salt_1, frame_salt_2 = WAL_FRAME_HEADER.unpack_from(frame_header)
            if (frame_salt_1, frame_salt_2) == (salt_1, salt_2):
                pages.add(page)
            offset += frame_bytes


def describe_remote(remote_url: Optional[Union[str, Callable[[], Optional[str]]]]) -> str:
    """The remote of an open, as an error message names it."""
    if remote_url is None:
        return "the remote saved in the replica"
    if callable(remote_url):
        return "the URL from the remote_url callable"
    return remote_url
