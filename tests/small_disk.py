"""A small tmpfs of its own for tests that fill the disk: mounted on a test's folder, unmounted when the test ends.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the tests that need it are skipped, saying why.
`fill(leaving=N)` writes a filler file until N bytes are left free, `free()` removes it: a full disk, then space freed,
as an application sees them.
"""

import os
import shutil
import subprocess
from pathlib import Path
from types import TracebackType
from typing import Optional

# How long mount and umount may take.
MOUNT_SECONDS = 10.0
# The filler is written in chunks of this size.
_FILL_CHUNK = 1024 * 1024


def free_bytes(directory: Path) -> int:
    """Bytes that an unprivileged write could still use in `directory`'s file system."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


class SmallDisk:
    """A tmpfs of `size` bytes mounted on `mount_point` (made if missing); a context manager that unmounts it.

    Raises `NotMountable` (with the reason) when the mount is not permitted here.
    """

    def __init__(self, mount_point: Path, size: int) -> None:
        self.path = mount_point
        self.size = size
        self._filler = mount_point / "filler"
        self._mounted = False

    def mount(self) -> None:
        """Mount the tmpfs; NotMountable if this process may not."""
        mount = shutil.which("mount")
        if mount is None:
            raise NotMountable("there is no mount command")
        if os.geteuid() != 0:
            raise NotMountable("mounting a tmpfs needs root")
        self.path.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [mount, "-t", "tmpfs", "-o", f"size={self.size}", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
            timeout=MOUNT_SECONDS,
        )
        if result.returncode != 0:
            raise NotMountable(f"mount -t tmpfs failed: {result.stderr.strip() or result.returncode}")
        self._mounted = True

    def unmount(self) -> None:
        """Unmount it (lazily, so that a file still open somewhere does not keep the test waiting)."""
        if self._mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=MOUNT_SECONDS, check=False)
            self._mounted = False

    def fill(self, leaving: int) -> None:
        """Write a filler file until about `leaving` bytes are left free (tmpfs counts in pages of 4 KB)."""
        with open(self._filler, "ab") as filler:
            while (to_write := free_bytes(self.path) - leaving) > 0:
                filler.write(b"\0" * min(to_write, _FILL_CHUNK))
                filler.flush()

    def free(self) -> None:
        """Remove the filler: the space it took is free again."""
        self._filler.unlink(missing_ok=True)

    def __enter__(self) -> "SmallDisk":
        self.mount()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.unmount()


class NotMountable(Exception):
    """This process may not mount a tmpfs here (the message says why)."""
