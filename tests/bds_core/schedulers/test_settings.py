"""SchedulerSettings declared once: its field descriptions, its checks and the kind registry."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from bds_core.schedulers import (
    SchedulerContext,
    SchedulerSettings,
    build_scheduler,
    registry,
    scheduler_kinds,
    scheduler_setting_fields,
    scheduler_settings_from_flat,
)


def test_every_field_is_described_with_help_and_its_default() -> None:
    described = {item.name: item for item in scheduler_setting_fields()}
    defaults = SchedulerSettings()
    assert list(described) == [item.name for item in dataclasses.fields(SchedulerSettings)]
    for name, item in described.items():
        assert item.help, f"{name} has no help"
        assert item.default == getattr(defaults, name)
    assert described["transform"].choices == ("softmax", "sigmoid", "identity")
    assert described["kind"].choices == scheduler_kinds() == ("scalar", "neural")
    assert described["kind"].flat_name == "scheduler"
    assert described["learning_rate"].flat_name == "scheduler_learning_rate"
    assert (described["sgld_burn_in"].ge, described["sgld_burn_in"].lt) == (0, 1)
    assert described["init_path"].optional and described["options"].value_type is dict


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"learning_rate": 0.0}, "scheduler learning_rate must be in (0, 100], got 0.0"),
        ({"learning_rate": float("nan")}, "scheduler learning_rate must be a finite number"),
        ({"entropy_weight": -1.0}, "scheduler entropy_weight must be in [0, 1000], got -1.0"),
        ({"sgld_burn_in": 1.0}, "scheduler sgld_burn_in must be in [0, 1), got 1.0"),
        ({"grad_clip": 0.0}, "scheduler grad_clip must be > 0, got 0.0"),
        ({"record_every": 0}, "scheduler record_every must be >= 1, got 0"),
        ({"update": "local"}, "scheduler update must be one of batch, global; got 'local'"),
    ],
)
def test_limits_and_choices_are_checked_with_the_field_named(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError) as raised:
        SchedulerSettings(**settings)  # type: ignore[arg-type]
    assert str(raised.value).startswith(message)


def test_flat_names_map_to_fields_and_other_keys_are_left() -> None:
    settings = scheduler_settings_from_flat(
        {"scheduler": "neural", "scheduler_learning_rate": 0.5, "sgld": True, "max_steps": 3}
    )
    assert (settings.kind, settings.learning_rate, settings.sgld) == ("neural", 0.5, True)


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match="unknown scheduler kind 'oracle'; known kinds: neural, scalar"
    ):
        build_scheduler(SchedulerSettings(kind="oracle"), SchedulerContext(num_examples=3))


def test_a_kind_whose_module_fails_to_import_raises_that_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(registry._builders, "broken", "bds_core.schedulers.no_such_module:build")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        build_scheduler(SchedulerSettings(kind="broken"), SchedulerContext(num_examples=3))


def test_a_kind_cannot_be_registered_twice_with_another_builder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "_builders", dict(registry._builders))
    registry.register_scheduler("scalar", "bds_core.schedulers.scalar:build_scalar")  # same: ok
    with pytest.raises(ValueError, match="already registered"):
        registry.register_scheduler("scalar", "elsewhere:build")
    registry.register_scheduler("custom", "elsewhere:build")
    assert registry.scheduler_kinds() == ("scalar", "neural", "custom")


def test_settings_and_kinds_load_without_torch() -> None:
    """The web service describes method.bds from these without loading the ML stack."""
    code = (
        "import sys\n"
        "from bds_core.schedulers import scheduler_kinds, scheduler_setting_fields\n"
        "scheduler_setting_fields()\n"
        "print(scheduler_kinds(), 'torch' in sys.modules)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert completed.stdout.strip() == "('scalar', 'neural') False"


def test_neural_options_have_upper_limits() -> None:
    """Options reach the service's method.bds: a huge head is refused, not attempted."""
    from bds_core.schedulers.neural import NeuralOptions

    with pytest.raises(ValueError, match=r"neural scheduler hidden must be in \[1, 4096\]"):
        NeuralOptions.from_options({"hidden": 1_000_000})
    with pytest.raises(ValueError, match=r"max_tokens must be in \[8, 8192\], got 4"):
        NeuralOptions.from_options({"max_tokens": 4})
