"""A local `tursodb --sync-server` on 127.0.0.1 for development: `make server`, and the remote of `make demo`.

Usage: python scripts/dev_server.py [--port N] [DATAFILE] [-- COMMAND ...]

- Without COMMAND it serves until Ctrl-C (or SIGTERM) and prints the URL to give a replica, e.g. as
  TURSO_DATABASE_URL for the examples.
- With COMMAND it runs that command with TURSO_DATABASE_URL set to the server (and TURSO_AUTH_TOKEN unset: the local
  server takes no token), then stops the server and exits with the command's status.

DATAFILE keeps the remote database across runs; without it the database lives in memory. The port defaults to a free
one. The binary is the one `make setup` installs (or TURSODB_BIN).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Optional

from testkit.sync_server import SyncServer


def _stop_on_sigterm(signum: int, frame: Optional[FrameType]) -> None:
    # Leaves through the `with` block, so that tursodb is stopped too.
    sys.exit(0)


def main(arguments: list[str]) -> int:
    """Parse `arguments` (what follows the script's name), serve, and return the exit status."""
    own, command = arguments, []
    if "--" in arguments:
        split = arguments.index("--")
        own, command = arguments[:split], arguments[split + 1 :]
    parser = argparse.ArgumentParser(description="A local tursodb --sync-server on 127.0.0.1 for development.")
    parser.add_argument("--port", type=int, help="port to listen on (default: a free one)")
    parser.add_argument("datafile", nargs="?", type=Path, help="database file to keep (default: in memory)")
    options = parser.parse_args(own)
    if options.datafile is not None and not options.datafile.resolve().parent.is_dir():
        parser.error(f"the folder of {options.datafile} does not exist")
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server = SyncServer(options.datafile, options.port)
        server.start()
    except (RuntimeError, ValueError) as error:
        parser.error(str(error))
    try:
        print(f"dev_server: tursodb --sync-server at {server.url} (database: {server.data_file})", flush=True)
        if command:
            environment = {key: value for key, value in os.environ.items() if key != "TURSO_AUTH_TOKEN"}
            environment["TURSO_DATABASE_URL"] = server.url
            return subprocess.run(command, env=environment).returncode
        print("dev_server: Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()
        print("dev_server: stopped", flush=True)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
