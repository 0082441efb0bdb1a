"""A testkit server in a child process: the parent's handle (`ChildServer`) and the child's loop (`serve_commands`).

Benchmarks run the proxy and the front end this way, so that moving bytes never competes with the measured process
for the interpreter lock. The child prints the port it listens on, then answers one line on standard output for each
command line on standard input. It stops when standard input closes (the parent went away) or `max_seconds` pass.
"""

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Optional

from typing_extensions import Self

# The folder that holds the testkit package: the child runs `python -m testkit...` from there.
PACKAGE_PARENT = Path(__file__).resolve().parent.parent
# Upper bound for the child to start listening, to answer a command and to exit once told to.
CHILD_SECONDS = 10.0
# What an answer starts with when the command failed; the rest of the line says why.
ERROR_PREFIX = "error: "


def _read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from a child's standard output, waiting at most `timeout` seconds for it to begin."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError(f"the child process did not answer within {timeout} s")
    return stream.readline().decode().strip()


class ChildServer:
    """A testkit server run as `python -m MODULE ARGUMENTS...` in a child process; use it as a context manager.

    `url` is where it listens once started. Subclasses turn their verbs into command lines with `command()`.
    """

    def __init__(self, module: str, arguments: list[str], scheme: str = "http") -> None:
        self._command_line = [sys.executable, "-m", module, *arguments]
        self._scheme = scheme
        self._process: Optional["subprocess.Popen[bytes]"] = None
        self.port = 0
        self.url = ""

    def start(self) -> None:
        """Start the child and wait, with a bound, until it listens."""
        self._process = subprocess.Popen(
            self._command_line, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=PACKAGE_PARENT
        )
        assert self._process.stdout is not None
        try:
            line = _read_line(self._process.stdout, CHILD_SECONDS)
        except TimeoutError:
            line = ""
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"{' '.join(self._command_line)} did not start (it printed {line!r})")
        self.port = int(line)
        self.url = f"{self._scheme}://127.0.0.1:{self.port}"

    def command(self, line: str) -> str:
        """Send one command line and return the child's answer; raise RuntimeError if it failed or is not running."""
        process = self._process
        if process is None or process.stdin is None or process.stdout is None:
            raise RuntimeError(f"{self._command_line[2]} is not running")
        process.stdin.write(line.encode() + b"\n")
        process.stdin.flush()
        answer = _read_line(process.stdout, CHILD_SECONDS)
        if not answer or answer.startswith(ERROR_PREFIX):
            raise RuntimeError(f"{self._command_line[2]} refused {line!r}: {answer or 'it exited'}")
        return answer

    def stop(self) -> None:
        """Close the child's standard input (its signal to stop), and kill it if it has not exited within a bound."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=CHILD_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=CHILD_SECONDS)
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc_value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> None:
        self.stop()


def _command_lines(max_seconds: float) -> Iterator[str]:
    """Lines of standard input until it closes or `max_seconds` pass (read from the descriptor, so none is buffered
    out of select's sight)."""
    stdin = sys.stdin.fileno()
    buffered = b""
    deadline = time.monotonic() + max_seconds
    while True:
        while b"\n" in buffered:
            line, buffered = buffered.split(b"\n", 1)
            yield line.decode().strip()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        ready, _, _ = select.select([stdin], [], [], remaining)
        if not ready:
            return
        data = os.read(stdin, 4096)
        if not data:
            return
        buffered += data


def serve_commands(port: int, answer: Callable[[str], str], max_seconds: float) -> None:
    """The child's side: print `port`, then print `answer(line)` for every command line until told to stop.

    An exception from `answer` becomes an `error: ...` line, so that the parent hears why instead of hanging.
    """
    print(port, flush=True)
    for line in _command_lines(max_seconds):
        if not line:
            continue
        try:
            reply = answer(line)
        except Exception as error:  # the parent gets the reason; the child keeps serving
            reply = f"{ERROR_PREFIX}{error}"
        print(reply, flush=True)
