"""`SchedulerSettings`: every BDS scheduler setting, declared once.

Each field carries its type (a ``Literal`` lists the choices), default, help and limits; the
``bds train`` options, the service's ``method.bds`` request schema and the checks below are all
built from these declarations (`scheduler_setting_fields`). Adding a setting is adding a field
here (docs/bds-method.md, "Adding a scheduler setting"). This module imports no torch, so the
web service can describe the settings without loading the ML stack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from bds_core.budget import DEFAULT_LOSS_TIMING
from bds_core.setting_fields import SettingField, check_settings, from_flat_names, setting_fields

WeightTransform = Literal["softmax", "sigmoid", "identity"]
SchedulerUpdate = Literal["batch", "global"]
ReferenceLoss = Literal["none", "initial", "agnostic"]
LossTiming = Literal["after", "before"]

WEIGHT_TRANSFORMS: tuple[str, ...] = get_args(WeightTransform)
SCHEDULER_UPDATES: tuple[str, ...] = get_args(SchedulerUpdate)
REFERENCE_LOSSES: tuple[str, ...] = get_args(ReferenceLoss)
LOSS_TIMINGS: tuple[str, ...] = get_args(LossTiming)


@dataclass
class SchedulerSettings:
    """How BDS infers per-example weights (see docs/bds-method.md).

    Metadata of a field: ``help``; limits ``ge``/``gt``/``le``/``lt`` (checked here and
    offered as the CLI's and the API's limits); ``flat_name``, the setting's name beside a
    run's other settings where its own name would be ambiguous there.
    """

    kind: str = field(
        default="scalar",
        metadata={
            "help": "'scalar' (one logit per example) or 'neural' (head over embeddings)",
            "flat_name": "scheduler",
        },
    )
    transform: WeightTransform = field(
        default="softmax",
        metadata={
            "help": "logits -> weights: 'softmax' (N*softmax, sums to N), 'sigmoid' (2*sigmoid), 'identity'"
        },
    )
    update: SchedulerUpdate = field(
        default="batch",
        metadata={
            "help": "'batch': batch-centred update (B*softmax over the batch); 'global': the release's update through N*softmax over all examples"
        },
    )
    reference: ReferenceLoss = field(
        default="initial",
        metadata={
            "help": "reference loss r_i: 'none' (r=0, the release), 'initial' (starting model), 'agnostic' (adapter trained on weighted customer data only)"
        },
    )
    loss_timing: LossTiming = field(
        default=DEFAULT_LOSS_TIMING,
        metadata={
            "help": "scheduler step uses the per-example losses of the model step's own passes ('before' the update, as the release: no extra pass; the default) or losses recomputed 'after' the model step (the paper; one more forward pass over the customer batch)"
        },
    )
    learning_rate: float = field(
        default=0.1,
        metadata={
            "help": "learning rate of the scheduler parameters (AdamW), or the SGLD step size",
            "flat_name": "scheduler_learning_rate",
            "gt": 0,
            "le": 100,
        },
    )
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "AdamW weight decay of the scheduler parameters", "ge": 0},
    )
    grad_clip: float = field(
        default=10.0, metadata={"help": "gradient-norm clip of the scheduler step", "gt": 0}
    )
    entropy_weight: float = field(
        default=0.0,
        metadata={
            "help": "strength of a KL(uniform || weights) prior that keeps weights from collapsing onto few examples",
            "ge": 0,
            "le": 1000,
        },
    )
    sgld: bool = field(
        default=False,
        metadata={
            "help": "sample the posterior of the scheduler parameters with preconditioned SGLD "
            "(the scheduler learning rate is its step size) instead of optimising them with "
            "AdamW: each example's weight then comes with a 90% interval"
        },
    )
    sgld_temperature: float = field(
        default=1.0,
        metadata={
            "help": "T of the sampled law exp(-U/T): 1 is the posterior, < 1 sharper, > 1 flatter",
            "gt": 0,
            "le": 1e9,
        },
    )
    sgld_step_decay: float = field(
        default=0.0,
        metadata={
            "help": "gamma of the step-size schedule eps_t = eps_0 * (1 + t)^-gamma "
            "(0: constant step; 0.5-1: the decreasing steps of Welling and Teh)",
            "ge": 0,
            "le": 1,
        },
    )
    sgld_burn_in: float = field(
        default=0.5,
        metadata={
            "help": "share of the run's scheduler steps discarded before samples are kept",
            "ge": 0,
            "lt": 1,
        },
    )
    prior_std: float = field(
        default=1.0,
        metadata={
            "help": "sigma of the Gaussian prior N(initial value, sigma^2) on every scheduler "
            "parameter when sampling (the posterior needs a proper prior)",
            "gt": 0,
            "le": 100,
        },
    )
    record_last: int = field(
        default=20,
        metadata={
            "help": "K: the most recent kept weight samples (sampling) or iterates (optimising) "
            "behind each example's mean, spread and interval",
            "ge": 1,
        },
    )
    record_every: int = field(
        default=1,
        metadata={"help": "record a weight iterate every this many scheduler steps", "ge": 1},
    )
    init_path: str | None = field(
        default=None,
        metadata={
            "help": "pretrained neural scheduler to start from (neural kind, or scalar logits initialised from its scores)"
        },
    )
    options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "kind-specific options (for example the neural scheduler's encoder and head)"
        },
    )

    def __post_init__(self) -> None:
        check_settings(self, _FIELDS, "scheduler")


_FIELDS = setting_fields(SchedulerSettings)


def scheduler_setting_fields() -> tuple[SettingField, ...]:
    """Every scheduler setting, described; the kind's choices are the registered kinds."""
    from bds_core.schedulers.registry import scheduler_kinds

    return tuple(
        item.with_choices(scheduler_kinds()) if item.name == "kind" else item for item in _FIELDS
    )


def scheduler_settings_from_flat(values: Mapping[str, Any]) -> SchedulerSettings:
    """Settings from flat names (``scheduler``, ``scheduler_learning_rate``, ...); other keys
    of `values` are not scheduler settings and are left alone."""
    return SchedulerSettings(**from_flat_names(_FIELDS, values))
