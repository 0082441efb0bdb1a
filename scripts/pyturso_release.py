"""The released pyturso files this project builds on: the one place that talks to the package registry.

`make wheel` rebuilds pyturso's released wheels with our modules, and `make test-pyturso` runs the test file of the
released sdist against our module. Both need the release's own files, checked against the digests the registry
publishes for them: this module lists them (through `pypi-simple` and its default endpoint), downloads what is asked
for into a git-ignored cache folder, and verifies every file's sha256 before handing out its path, also when the file
was already in the cache. Nothing fetched here is ever committed.

Usage (from the checkout, with the dev venv's python):
    python scripts/pyturso_release.py list                      # the release's files and their sha256
    python scripts/pyturso_release.py wheels                    # download every wheel; print their paths
    python scripts/pyturso_release.py sdist-file PATH DEST      # one file of the sdist (e.g. tests/x.py) into DEST
"""

import argparse
import hashlib
import sys
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pypi_simple import DistributionPackage, PyPISimple

PROJECT = "pyturso"
# The pinned driver (requirements-driver.txt); every file used here belongs to this release.
VERSION = "0.8.3"
CHECKOUT = Path(__file__).resolve().parent.parent
# Downloads are kept here between runs (git-ignored); a cached file is re-checked against the registry every time.
CACHE_DIR = CHECKOUT / "build" / "pyturso-release"


class ReleaseError(Exception):
    """The registry's answer or a downloaded file is not what this release must be (missing, or a digest mismatch)."""


@dataclass(frozen=True)
class ReleaseFile:
    """One file of the release as the registry lists it: what to download and the sha256 it must have."""

    filename: str
    package_type: str  # "wheel" or "sdist"
    sha256: str  # hex digest published by the registry
    package: DistributionPackage


def list_release_files() -> list[ReleaseFile]:
    """Every file of pyturso VERSION on the registry, with its published sha256; fail if one has no sha256."""
    with PyPISimple() as client:
        page = client.get_project_page(PROJECT)
    files: list[ReleaseFile] = []
    for package in page.packages:
        if package.version != VERSION or package.package_type is None:
            continue
        sha256 = package.digests.get("sha256")
        if not sha256:
            raise ReleaseError(f"the registry publishes no sha256 for {package.filename}; refusing to use it")
        files.append(ReleaseFile(package.filename, package.package_type, sha256.lower(), package))
    if not files:
        raise ReleaseError(f"the registry lists no file for {PROJECT}=={VERSION}")
    return files


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, release_file: ReleaseFile) -> None:
    """Raise ReleaseError unless the file's sha256 is the registry's digest for it."""
    actual = sha256_of(path)
    if actual != release_file.sha256:
        raise ReleaseError(
            f"sha256 mismatch for {path}: the registry says {release_file.sha256}, the file has {actual}"
        )


def fetch(release_file: ReleaseFile, cache_dir: Path = CACHE_DIR) -> Path:
    """The path of the release file in the cache, downloaded first if needed; its sha256 always checked."""
    path = cache_dir / release_file.filename
    if not path.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".part")
        with PyPISimple() as client:
            # verify=True: pypi-simple checks every published digest too, and keeps no file that fails.
            client.download_package(release_file.package, partial, verify=True, timeout=120)
        verify(partial, release_file)
        partial.replace(path)
    try:
        verify(path, release_file)
    except ReleaseError:
        # A damaged cache entry must not be used again; the next run downloads it afresh.
        path.unlink()
        raise
    return path


def fetch_wheels(cache_dir: Path = CACHE_DIR) -> list[Path]:
    """Every wheel of the release (one per published platform), downloaded and checked."""
    wheels = [release_file for release_file in list_release_files() if release_file.package_type == "wheel"]
    if not wheels:
        raise ReleaseError(f"the registry lists no wheel for {PROJECT}=={VERSION}")
    return [fetch(release_file, cache_dir) for release_file in wheels]


def fetch_sdist(cache_dir: Path = CACHE_DIR) -> Path:
    """The release's source distribution, downloaded and checked."""
    sdists = [release_file for release_file in list_release_files() if release_file.package_type == "sdist"]
    if len(sdists) != 1:
        raise ReleaseError(f"expected one sdist of {PROJECT}=={VERSION}, the registry lists {len(sdists)}")
    return fetch(sdists[0], cache_dir)


def extract_sdist_file(sdist: Path, member_path: str, destination: Path) -> Path:
    """Copy one file of the sdist (its path below the sdist's top folder, e.g. tests/x.py) to destination/NAME."""
    with tarfile.open(sdist, "r:gz") as archive:
        matches = [
            member
            for member in archive.getmembers()
            if member.isfile() and member.name.split("/", 1)[-1] == member_path
        ]
        if len(matches) != 1:
            raise ReleaseError(f"{sdist.name} has {len(matches)} files at {member_path!r}, expected 1")
        stream = archive.extractfile(matches[0])
        if stream is None:
            raise ReleaseError(f"cannot read {member_path!r} from {sdist.name}")
        content = stream.read()
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / Path(member_path).name
    target.write_bytes(content)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the release's files and their published sha256")
    commands.add_parser("wheels", help="download and check every wheel; print their paths")
    extract = commands.add_parser("sdist-file", help="copy one file of the checked sdist into a folder")
    extract.add_argument("member_path", help="path inside the sdist below its top folder, e.g. tests/test_x.py")
    extract.add_argument("destination", type=Path, help="folder to write the file into")
    arguments = parser.parse_args(argv)
    try:
        if arguments.command == "list":
            for release_file in list_release_files():
                print(f"{release_file.sha256}  {release_file.filename}")
        elif arguments.command == "wheels":
            for path in fetch_wheels():
                print(path)
        else:
            print(extract_sdist_file(fetch_sdist(), arguments.member_path, arguments.destination))
    except ReleaseError as error:
        print(f"pyturso_release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
