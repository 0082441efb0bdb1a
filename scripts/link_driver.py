"""Link the pinned driver's files into turso/ and put this checkout on the venv's import path.

Run by `make setup`, and once per test venv (.venvs/X.Y) by `make test`: the .pth goes into the site-packages of
the interpreter that runs this script. The driver (pyturso) is installed with `pip install --target .driver`; its
package files are symlinked into turso/ next to our lib_sync_aio.py, so that turso/ is one complete package for the
interpreter, mypy and pyright (pyright does not merge a package split across two folders). Our own files are never
replaced. The links are git-ignored: the driver's files are used as they are, never committed or edited.
"""

import os
import sys
import sysconfig
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
PACKAGE = CHECKOUT / "turso"
DRIVER_PACKAGE = CHECKOUT / ".driver" / "turso"
# Files of the driver's package that this project provides itself.
OURS = {"lib_sync_aio.py", "lib_sync_aio.pyi", "py.typed", "__pycache__"}


def link_driver_files() -> None:
    if not (DRIVER_PACKAGE / "lib_sync.py").is_file():
        sys.exit(f"link_driver: no driver at {DRIVER_PACKAGE}; run `make setup`")
    wanted = {entry.name for entry in DRIVER_PACKAGE.iterdir() if entry.name not in OURS}
    for entry in PACKAGE.iterdir():
        # Drop links left by an earlier driver version; never touch a real file or folder.
        if entry.is_symlink() and entry.name not in wanted:
            entry.unlink()
    for name in sorted(wanted):
        link = PACKAGE / name
        target = os.path.relpath(DRIVER_PACKAGE / name, PACKAGE)
        if link.is_symlink() and os.readlink(link) == target:
            continue
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            sys.exit(f"link_driver: {link} is a real file; the driver's files must stay links")
        link.symlink_to(target)


def put_checkout_on_path() -> None:
    # Like an editable install: `import turso` from anywhere in the venv finds this checkout.
    site_packages = Path(sysconfig.get_paths()["purelib"])
    (site_packages / "turso_sync_aio_checkout.pth").write_text(f"{CHECKOUT}\n")


if __name__ == "__main__":
    link_driver_files()
    put_checkout_on_path()
