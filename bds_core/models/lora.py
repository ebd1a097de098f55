"""LoRA adapters via peft: settings with validation, and applying them to a causal LM."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from torch import nn
from transformers import PreTrainedModel

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class LoraSettings:
    """LoRA hyperparameters; invalid values raise ValueError naming the field and the value."""

    r: int = field(default=8, metadata={"help": "LoRA rank (positive)"})
    alpha: float = field(
        default=16, metadata={"help": "LoRA scaling numerator; the update is scaled by alpha / r"}
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout on the LoRA branch input, in [0, 1)"}
    )
    target_modules: tuple[str, ...] = field(
        default=DEFAULT_TARGET_MODULES,
        metadata={
            "help": "names of the Linear modules to adapt (e.g. q_proj,k_proj,v_proj,o_proj)"
        },
    )

    def __post_init__(self) -> None:
        # Accept a list (from JSON, say) or "a,b" but store a tuple: frozen and hashable.
        targets = self.target_modules
        if isinstance(targets, str):
            targets = tuple(name.strip() for name in targets.split(",") if name.strip())
        object.__setattr__(self, "target_modules", tuple(targets))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"lora r must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ValueError("lora target_modules must name at least one module, got none")
        blank = [name for name in self.target_modules if not isinstance(name, str) or not name]
        if blank:
            raise ValueError(f"lora target_modules must be non-empty names, got {blank!r}")


def lora_config(settings: LoraSettings) -> LoraConfig:
    """The peft LoraConfig for a causal LM with these settings (no bias training)."""
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        # peft annotates lora_alpha as int but only ever computes alpha / r, so floats are fine.
        lora_alpha=settings.alpha,  # type: ignore[arg-type]
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last-name parts of the model's Linear modules (candidates for target_modules)."""
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, nn.Linear)
        }
    )


def apply_lora(
    model: PreTrainedModel, settings: LoraSettings, adapter_name: str = "default"
) -> PeftModel:
    """Wrap ``model`` with a trainable LoRA adapter; the base weights are frozen.

    Raises ValueError listing the model's Linear module names if a target module is missing.
    """
    _check_targets_exist(model, settings.target_modules)
    peft_model = get_peft_model(model, lora_config(settings), adapter_name=adapter_name)
    assert isinstance(peft_model, PeftModel)
    return peft_model


def _check_targets_exist(model: nn.Module, targets: Iterable[str]) -> None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in targets if name not in present]
    if missing:
        raise ValueError(
            f"lora target_modules {missing} are not modules of {type(model).__name__}; "
            f"its Linear modules are: {', '.join(linear_module_names(model))}"
        )
