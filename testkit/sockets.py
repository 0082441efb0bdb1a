"""What TCP connections this process holds, read from /proc (Linux): a test's proof that a socket was let go of when
it was closed, not when a garbage collection found it."""

import os
from pathlib import Path
from typing import Optional

# /proc/net/tcp's state of a listening socket (every other state belongs to a connection).
_LISTEN = "0A"


def held_connections(*, local_port: Optional[int] = None, remote_port: Optional[int] = None) -> int:
    """How many TCP connections over IPv4 this process holds as file descriptors, with that local or remote port."""
    if local_port is None and remote_port is None:
        raise ValueError("name a local_port or a remote_port")
    inodes: set[str] = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if state == _LISTEN:
                continue
            if local_port is not None and int(local.rsplit(":", 1)[1], 16) != local_port:
                continue
            if remote_port is not None and int(remote.rsplit(":", 1)[1], 16) != remote_port:
                continue
            inodes.add(inode)
    held = 0
    for descriptor in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue  # closed since the listing (the listing's own descriptor, say)
        if target.startswith("socket:[") and target[len("socket:[") : -1] in inodes:
            held += 1
    return held
