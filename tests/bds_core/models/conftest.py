"""Fixtures for bds_core.models: a private asset cache and small fake wheels built in the test.

Helpers are handed out through fixtures (not imported by the test modules), so the tests work
under any pytest import mode.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bds_core.models.catalog import CatalogEntry, WheelSource

FAKE_PACKAGE = "fake-asset"
FAKE_VERSION = "0.1.0"
FAKE_WHEEL_NAME = "fake_asset-0.1.0-py3-none-any.whl"
FAKE_DATA = {
    "fake_asset/data/greeting.txt": b"hello from a wheel\n",
    "fake_asset/data/nested/numbers.csv": b"n\n1\n2\n3\n",
    "fake_asset/__init__.py": b"",
}


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty BDS_CACHE_DIR for this test, with no wheelhouse configured."""
    cache = tmp_path / "bds-cache"
    monkeypatch.setenv("BDS_CACHE_DIR", str(cache))
    monkeypatch.delenv("BDS_WHEELHOUSE", raising=False)
    return cache


def write_fake_wheel(folder: Path) -> Path:
    """A minimal, valid py3-none-any wheel carrying FAKE_DATA; returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FAKE_WHEEL_NAME
    dist_info = f"fake_asset-{FAKE_VERSION}.dist-info"
    members = {
        **FAKE_DATA,
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {FAKE_PACKAGE}\nVersion: {FAKE_VERSION}\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: bds-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(f"{name},,\n" for name in members) + f"{dist_info}/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
        archive.writestr(f"{dist_info}/RECORD", record)
    return path


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_entry(sha256: str, members: tuple[str, ...] = ("fake_asset/data/",)) -> CatalogEntry:
    """A catalog entry for the fake wheel: the data folder, returned as a folder."""
    return CatalogEntry(
        name="fake-asset",
        kind="dataset",
        description="test data carried by a fake wheel",
        version=FAKE_VERSION,
        asset_relpath="",
        wheel=WheelSource(
            package=FAKE_PACKAGE,
            version=FAKE_VERSION,
            filename=FAKE_WHEEL_NAME,
            sha256=sha256,
            members=members,
            strip_prefix="fake_asset/data/",
        ),
    )


class FakeWheels:
    """The fake wheel's helpers, for tests that assemble their own index or entry."""

    data = FAKE_DATA
    wheel_name = FAKE_WHEEL_NAME

    write = staticmethod(write_fake_wheel)
    sha256 = staticmethod(sha256_of)
    entry = staticmethod(fake_entry)


@pytest.fixture
def fake_wheels() -> FakeWheels:
    """Helpers to write the fake wheel and make its catalog entry."""
    return FakeWheels()


@pytest.fixture
def fake_wheelhouse(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Path]:
    """Build the fake wheel in a wheelhouse, point BDS_WHEELHOUSE at it and register the entry.

    Call it with ``sha256="..."`` to register a wrong checksum; returns the wheel's path.
    """
    from bds_core.models import catalog

    def install(
        sha256: str | None = None, members: tuple[str, ...] = ("fake_asset/data/",)
    ) -> Path:
        wheel = write_fake_wheel(tmp_path / "wheelhouse")
        monkeypatch.setenv("BDS_WHEELHOUSE", str(wheel.parent))
        entry = fake_entry(sha256 or sha256_of(wheel), members)
        monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
        return wheel

    return install
