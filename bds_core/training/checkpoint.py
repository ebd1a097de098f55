"""Atomic, verifiable checkpoints.

A checkpoint is a folder `step-000123/` written in three moves: every file goes into a
temporary folder, `manifest.json` (sha256 of every other file) is written last, and the folder
is renamed into place. A folder without a manifest, or whose files do not match it, is not a
checkpoint; resume takes the newest one that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

MANIFEST = "manifest.json"
_PREFIX = "step-"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checkpoint_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:07d}"


def begin_checkpoint(root: Path, step: int) -> Path:
    """Create an empty temporary folder for the files of the checkpoint at `step`."""
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{checkpoint_dir_name(step)}-{os.getpid()}-{time.monotonic_ns()}"
    staging.mkdir()
    return staging


def commit_checkpoint(staging: Path, step: int) -> Path:
    """Write the manifest last, fsync it, and rename the folder into place."""
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    manifest = {
        "step": step,
        "files": {str(p.relative_to(staging)): file_sha256(p) for p in files},
    }
    manifest_path = staging / MANIFEST
    with manifest_path.open("w") as handle:
        json.dump(manifest, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    final = staging.parent / checkpoint_dir_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    return final


def verify_checkpoint(path: Path) -> bool:
    """True when the folder has a manifest and every listed file matches its hash."""
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        return False
    try:
        manifest = json.loads(manifest_path.read_text())
        for relative, expected in manifest["files"].items():
            file_path = path / relative
            if not file_path.is_file() or file_sha256(file_path) != expected:
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def list_checkpoints(root: Path) -> list[Path]:
    """Checkpoint folders under `root`, newest step first (verified or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX)]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]), reverse=True)


def latest_valid_checkpoint(root: Path) -> Path | None:
    """The newest checkpoint that verifies, or None."""
    for candidate in list_checkpoints(root):
        if verify_checkpoint(candidate):
            return candidate
    return None


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the `keep` newest checkpoints, and stale temporary folders."""
    for old in list_checkpoints(root)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    if root.is_dir():
        for staging in root.glob(".tmp-*"):
            shutil.rmtree(staging, ignore_errors=True)
