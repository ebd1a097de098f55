"""Adapter archives: the same readable file modes whatever the worker's disk had."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import pytest

from bds_service.jobs.artifacts import ArchiveFormat, build_adapter_archive


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    """A PEFT folder as a trainer leaves it: the weights private (0600), the config 0644, and
    a symlink pointing out of the folder."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (folder / "adapter_config.json").chmod(0o644)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    weights.chmod(0o600)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the adapter")
    (folder / "link.txt").symlink_to(secret)
    return folder


@pytest.mark.parametrize("archive_format", ["tar.gz", "zip"])
def test_every_archived_file_is_0644_and_symlinks_are_left_out(
    adapter: Path, archive_format: ArchiveFormat
) -> None:
    archive = build_adapter_archive(adapter, "ftjob-x-adapter", archive_format)
    try:
        if archive_format == "tar.gz":
            with tarfile.open(archive, "r:gz") as packed:
                members = packed.getmembers()
                modes = {member.name: member.mode for member in members}
                assert all(member.isfile() and member.uname == "" for member in members)
                weights = packed.extractfile("ftjob-x-adapter/adapter_model.safetensors")
                assert weights is not None
                content = weights.read()
        else:
            with zipfile.ZipFile(archive) as packed:
                modes = {
                    info.filename: (info.external_attr >> 16) & 0o7777 for info in packed.infolist()
                }
                content = packed.read("ftjob-x-adapter/adapter_model.safetensors")
    finally:
        archive.unlink()
    assert modes == {
        "ftjob-x-adapter/adapter_config.json": 0o644,
        "ftjob-x-adapter/adapter_model.safetensors": 0o644,
    }
    assert content == (adapter / "adapter_model.safetensors").read_bytes()
