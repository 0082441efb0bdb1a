"""`make wheel`: pyturso's released wheels, rebuilt with this project's modules, into dist/.

For every wheel that pyturso VERSION publishes (one per platform, listed by the registry; see pyturso_release.py):
1. download it and check its sha256 against the registry's digest;
2. unpack it with the pinned `wheel` tool;
3. put in every file of ours that is committed under turso/ (turso/lib_sync_aio.py replaces the driver's own,
   turso/lib_sync_aio.pyi, py.typed, and any module added later, with its entry points merged into
   entry_points.txt);
4. give it the PEP 440 local version VERSION+LOCAL_VERSION (METADATA's Version and the .dist-info folder), which still
   satisfies `pyturso==VERSION`, and add what our modules require to METADATA (REQUIRES_DIST: aiohttp);
5. pack it with `wheel pack`, which writes RECORD and the file name;
6. check the result: our files hold exactly our bytes, every other file of the released wheel is byte for byte the
   same (licenses, SBOM, the native extension), and METADATA changed only in its Version line and our Requires-Dist
   lines.
When dist/ already holds the wheels built from the same files of ours and the same build code, nothing is done
(dist/.built records what they were built from).

Usage: python scripts/build_wheels.py [--dest dist]
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyturso_release
from pyturso_release import CHECKOUT, PROJECT, VERSION, ReleaseError

# The label that tells this build from the stock release: pyturso VERSION+LOCAL_VERSION.
LOCAL_VERSION = "syncaio.1"
FULL_VERSION = f"{VERSION}+{LOCAL_VERSION}"
# How many wheels pyturso VERSION publishes (manylinux x86_64 and aarch64, macOS x86_64 and arm64), as found on the
# registry when this was written: a different count means the release changed under us.
EXPECTED_WHEEL_COUNT = 4
# What our modules require besides the driver's own requirements, added to METADATA: aiohttp performs the sync
# engine's HTTP on the event loop (turso/_sync_aio/http.py). 3.12.11 is the first release whose TCPConnector.close()
# takes abort_ssl, which http.py uses; tests/test_transport.py passes on it and on the pin of requirements.txt.
REQUIRES_DIST = ("aiohttp>=3.12.11,<4",)
# Files of the released wheel that ours build on; a wheel without them is not the driver we were written for.
DRIVER_FILES = ("turso/lib_sync.py", "turso/lib_aio.py", "turso/worker.py", "turso/aio/sync/__init__.py")
# The only files of the released wheel that ours may replace: the module we rewrite and the PEP 561 marker.
REPLACEABLE = {"turso/lib_sync_aio.py", "turso/py.typed"}
# Our files that every build must contain.
# (lib_sync_aio.py imports background_sync_aio.py and the private package _sync_aio at its top: a wheel without them
# could not import our module.)
REQUIRED_OURS = {
    "turso/lib_sync_aio.py",
    "turso/lib_sync_aio.pyi",
    "turso/background_sync_aio.py",
    "turso/_sync_aio/__init__.py",
    "turso/py.typed",
}


@dataclass(frozen=True)
class EntryPoint:
    """An entry point that a module of ours declares: shipped only when the module's file is shipped."""

    group: str  # e.g. "sqlalchemy.dialects"
    name: str  # e.g. "sqlite.aioturso_sync"
    target: str  # "module:attribute"

    @property
    def attribute(self) -> str:
        return self.target.rsplit(":", 1)[1]


# The code that makes a build: a change to it, or to our files, makes the next `make wheel` build again.
BUILD_CODE = (Path(__file__).resolve(), Path(pyturso_release.__file__).resolve())
# Kept in dest with the built wheels: the fingerprint of their inputs, then their file names.
STAMP = ".built"

# The entry points of our modules, keyed by the module's path in the wheel.
ENTRY_POINTS: dict[str, list[EntryPoint]] = {
    "turso/sqlalchemy_sync_aio.py": [
        EntryPoint("sqlalchemy.dialects", "sqlite.aioturso_sync", "turso.sqlalchemy_sync_aio:AioTursoSyncDialect"),
    ],
}


class BuildError(Exception):
    """A released wheel is not what we expect, or a built wheel is not what we meant to build."""


def our_files() -> dict[str, bytes]:
    """Every committed file of ours under turso/ ({path in the wheel: content}); the driver's links are not ours."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", "turso"], cwd=CHECKOUT, capture_output=True, check=True
    ).stdout.decode()
    paths = sorted(path for path in listed.split("\0") if path)
    missing = REQUIRED_OURS - set(paths)
    if missing:
        raise BuildError(f"not committed under turso/: {sorted(missing)}")
    return {path: (CHECKOUT / path).read_bytes() for path in paths}


def entry_points_for(ours: dict[str, bytes]) -> list[EntryPoint]:
    """The entry points of the modules being shipped; fail if a module no longer defines what its entry names."""
    wanted: list[EntryPoint] = []
    for path, entries in ENTRY_POINTS.items():
        if path not in ours:
            continue
        for entry in entries:
            if not re.search(rf"^class {re.escape(entry.attribute)}\b", ours[path].decode(), flags=re.M):
                raise BuildError(f"{path} defines no class {entry.attribute} for entry point {entry.name}")
            wanted.append(entry)
    return wanted


def merge_entry_points(existing: str, entries: list[EntryPoint]) -> str:
    """entry_points.txt with our entries added to their groups; existing lines are kept as they are."""
    lines = existing.splitlines()
    for entry in entries:
        header = f"[{entry.group}]"
        names = {line.split("=", 1)[0].strip() for line in lines if "=" in line}
        if entry.name in names:
            raise BuildError(f"the released wheel already declares an entry point named {entry.name}")
        line = f"{entry.name}={entry.target}"  # the released file's own style: no spaces around "="
        if header in lines:
            end = lines.index(header) + 1
            while end < len(lines) and lines[end].strip() and not lines[end].startswith("["):
                end += 1
            lines.insert(end, line)
        else:
            if lines and lines[-1].strip():
                lines.append("")
            lines.extend([header, line])
    return "\n".join(lines) + "\n"


def built_metadata(metadata: bytes) -> bytes:
    """METADATA with its Version line set to FULL_VERSION and our REQUIRES_DIST lines before the released ones;
    nothing else changes."""
    old_line = f"Version: {VERSION}\n".encode()
    if metadata.count(old_line) != 1 or not metadata.startswith(b"Metadata-Version:"):
        raise BuildError(f"METADATA has no single 'Version: {VERSION}' line")
    header_end = metadata.find(b"\n\n")
    position = metadata.index(old_line)
    if header_end != -1 and position > header_end:
        raise BuildError("METADATA's Version line is not in its header")
    metadata = metadata.replace(old_line, f"Version: {FULL_VERSION}\n".encode(), 1)
    header_end = metadata.find(b"\n\n")
    first_requirement = metadata.find(b"\nRequires-Dist: ")
    if first_requirement == -1 or (header_end != -1 and first_requirement > header_end):
        raise BuildError("METADATA has no Requires-Dist line in its header")
    ours = "".join(f"\nRequires-Dist: {requirement}" for requirement in REQUIRES_DIST).encode()
    return metadata[:first_requirement] + ours + metadata[first_requirement:]


def dist_info(version: str) -> str:
    return f"{PROJECT}-{version}.dist-info"


def rebuild(released: Path, ours: dict[str, bytes], entries: list[EntryPoint], dest: Path) -> Path:
    """Build one wheel: the released one with our files, entry points and version; return its path."""
    with tempfile.TemporaryDirectory(prefix="pyturso-wheel-") as scratch:
        subprocess.run(
            [sys.executable, "-m", "wheel", "unpack", "--dest", scratch, str(released)],
            check=True, stdout=subprocess.DEVNULL,
        )
        (root,) = Path(scratch).iterdir()
        for driver_file in DRIVER_FILES + ("turso/lib_sync_aio.py",):
            if not (root / driver_file).is_file():
                raise BuildError(f"{released.name} has no {driver_file}; it is not the driver we build on")
        for path, content in ours.items():
            target = root / path
            if target.exists() and path not in REPLACEABLE:
                raise BuildError(f"{path} would replace a file of the driver in {released.name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        old_info, new_info = root / dist_info(VERSION), root / dist_info(FULL_VERSION)
        if not old_info.is_dir():
            raise BuildError(f"{released.name} has no {old_info.name}")
        old_info.rename(new_info)
        metadata = new_info / "METADATA"
        metadata.write_bytes(built_metadata(metadata.read_bytes()))
        if entries:
            entry_points = new_info / "entry_points.txt"
            existing = entry_points.read_text() if entry_points.is_file() else ""
            entry_points.write_text(merge_entry_points(existing, entries))
        packed_before = set(dest.glob("*.whl"))
        # A fixed timestamp (the released wheels' own, 1980-01-01) makes a rebuild byte for byte the same.
        environment = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", "315532800")}
        subprocess.run(
            [sys.executable, "-m", "wheel", "pack", "--dest-dir", str(dest), str(root)],
            check=True, stdout=subprocess.DEVNULL, env=environment,
        )
    (built,) = set(dest.glob("*.whl")) - packed_before
    return built


def wheel_name_parts(wheel: Path, version: str | None = None) -> tuple[str, str, tuple[frozenset[str], ...]]:
    """Name, version and the set of each tag part of a wheel's file name (`wheel pack` sorts compressed tags)."""
    name, file_version, *tags = wheel.name.removesuffix(".whl").split("-")
    return name, version or file_version, tuple(frozenset(tag.split(".")) for tag in tags)


def check_built(released: Path, built: Path, ours: dict[str, bytes], entries: list[EntryPoint]) -> None:
    """Raise BuildError unless the built wheel is the released one plus exactly our changes."""
    if wheel_name_parts(built) != wheel_name_parts(released, version=FULL_VERSION):
        raise BuildError(f"built {built.name} from {released.name}: the name, version or tags differ")
    with zipfile.ZipFile(released) as original, zipfile.ZipFile(built) as rebuilt:
        before = {name: original.read(name) for name in original.namelist()}
        after = {name: rebuilt.read(name) for name in rebuilt.namelist()}
    old_info, new_info = dist_info(VERSION), dist_info(FULL_VERSION)
    renamed = {name.replace(old_info, new_info, 1): content for name, content in before.items()}
    record = f"{new_info}/RECORD"
    expected = {**renamed, **ours}
    expected[f"{new_info}/METADATA"] = built_metadata(renamed[f"{new_info}/METADATA"])
    if entries:
        existing = renamed.get(f"{new_info}/entry_points.txt", b"").decode()
        expected[f"{new_info}/entry_points.txt"] = merge_entry_points(existing, entries).encode()
    missing = sorted(set(expected) - set(after))
    extra = sorted(set(after) - set(expected))
    if missing or extra:
        raise BuildError(f"{built.name}: missing {missing}, unexpected {extra}")
    changed = sorted(name for name in expected if name != record and after[name] != expected[name])
    if changed:
        raise BuildError(f"{built.name}: content differs from what was meant for {changed}")
    recorded = {line.split(",", 1)[0] for line in after[record].decode().splitlines() if line}
    if recorded != set(after):
        raise BuildError(f"{built.name}: RECORD does not list exactly the wheel's files")


def fingerprint(ours: dict[str, bytes]) -> str:
    """What a build is made from besides the (digest-checked) released wheels: our files and this build's code."""
    digest = hashlib.sha256(FULL_VERSION.encode())
    sources = {**ours, **{f"scripts/{path.name}": path.read_bytes() for path in BUILD_CODE}}
    for path, content in sorted(sources.items()):
        digest.update(f"\0{path}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()


def up_to_date(dest: Path, ours: dict[str, bytes]) -> list[Path] | None:
    """The wheels in dest if an earlier build made them from the same inputs and they are all still there."""
    stamp = dest / STAMP
    if not stamp.is_file():
        return None
    lines = stamp.read_text().splitlines()
    if not lines:
        return None
    recorded, *names = lines
    wheels = [dest / name for name in names]
    if recorded != fingerprint(ours) or len(wheels) != EXPECTED_WHEEL_COUNT or not all(w.is_file() for w in wheels):
        return None
    return wheels


def build_all(dest: Path) -> list[Path]:
    """Rebuild every released wheel into dest (its earlier pyturso wheels removed); return the built wheels."""
    ours = our_files()
    already_built = up_to_date(dest, ours)
    if already_built is not None:
        print(f"build_wheels: {dest} is up to date (built from the same files)")
        return already_built
    entries = entry_points_for(ours)
    released_wheels = pyturso_release.fetch_wheels()
    if len(released_wheels) != EXPECTED_WHEEL_COUNT:
        names = [path.name for path in released_wheels]
        raise BuildError(f"the registry lists {len(names)} wheels, expected {EXPECTED_WHEEL_COUNT}: {names}")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / STAMP).unlink(missing_ok=True)
    for stale in dest.glob(f"{PROJECT}-*.whl"):
        stale.unlink()
    built_wheels: list[Path] = []
    for released in released_wheels:
        built = rebuild(released, ours, entries, dest)
        try:
            check_built(released, built, ours, entries)
        except BuildError:
            built.unlink()
            raise
        built_wheels.append(built)
    (dest / STAMP).write_text("\n".join([fingerprint(ours), *(path.name for path in built_wheels)]) + "\n")
    return built_wheels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=CHECKOUT / "dist", help="folder for the built wheels")
    arguments = parser.parse_args(argv)
    try:
        built = build_all(arguments.dest)
    except (BuildError, ReleaseError) as error:
        print(f"build_wheels: {error}", file=sys.stderr)
        return 1
    shipped = ", ".join(sorted(our_files()))
    for path in built:
        print(f"built {path} ({shipped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
