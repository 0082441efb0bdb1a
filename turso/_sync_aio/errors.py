"""The errors a call of ours raises: always a `turso.Error` for anything the database or the sync engine reports.

The driver leaves some native exceptions unmapped (`IoError` on a full disk, `Readonly`, `BusySnapshot`); they are
recognised by their module, "turso", since not all of them can be imported.
"""

import traceback
from typing import Optional

from ..lib import (
    DatabaseError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    OperationalError,
)

# The module the native extension gives its exception classes.
NATIVE_MODULE = "turso"

# The DB-API class for each native exception class, by name; the driver's own choices where it makes one, and
# sqlite3's for the ones it leaves out (a full disk, a read-only file and a stale snapshot are OperationalError there).
# A native class missing here (a newer driver's) becomes DatabaseError.
DBAPI_CLASS_OF_NATIVE: dict[str, type[Error]] = {
    "IoError": OperationalError,
    "Readonly": OperationalError,
    "BusySnapshot": OperationalError,
    "Busy": OperationalError,
    "Interrupt": OperationalError,
    "DatabaseFull": OperationalError,
    "Misuse": InterfaceError,
    "Constraint": IntegrityError,
    "Corrupt": DatabaseError,
    "NotAdb": DatabaseError,
    "Error": DatabaseError,
}


def native_dbapi_error(error: BaseException) -> Optional[Error]:
    """The DB-API error for a native exception of the driver's extension that the driver let through (same message,
    the native one as its `__cause__`); None for any other exception, which keeps its own class."""
    if type(error).__module__ != NATIVE_MODULE or isinstance(error, Error):
        return None
    dbapi_class = DBAPI_CLASS_OF_NATIVE.get(type(error).__name__, DatabaseError)
    mapped = dbapi_class(str(error))
    mapped.__cause__ = error
    return mapped


def job_error(error: BaseException) -> BaseException:
    """What a worker job's caller gets for `error` when it is not a `turso.Error` already: the DB-API error for a
    native one, InternalError for SystemExit and the like (the worker keeps running), anything else as it is (say a
    TypeError for a bad parameter). Called on the error path only."""
    mapped = native_dbapi_error(error)
    if mapped is not None:
        return mapped
    if isinstance(error, Exception):
        return error
    internal = InternalError(f"a worker job raised {error!r}")
    internal.__cause__ = error
    return internal


def clear_frames(error: BaseException) -> None:
    """Drop the local variables of the finished frames that `error`, and the errors it was raised from or while
    handling (`__cause__`, `__context__`), passed through: they hold the blocking connection, its cursors and the
    engine, so a caller who keeps the error would keep the replica's files open, also after close()."""
    seen: set[int] = set()
    chained: Optional[BaseException] = error
    while chained is not None and id(chained) not in seen:
        seen.add(id(chained))
        traceback.clear_frames(chained.__traceback__)
        chained = chained.__cause__ or chained.__context__
