"""The amortized neural scheduler: a small trainable head over frozen example embeddings.

`w_i = transform(f_phi(z_i))` where `z_i` is a frozen embedding of example i (prompt and
answer, `bds_core.encoders`) and `f_phi` a linear or 2-layer MLP head. Unlike the official
release, `phi` is trained: the base class's scheduler loss (bds-method.md step 4) backpropagates
into the head. A trained head is saved (`save_scheduler`) as `head.safetensors` plus
`scheduler.json` (encoder name and version, head config, label-free calibration of the score,
provenance) and scores any new dataset in one forward pass (`bds_core.scoring`), or starts a
job (`SchedulerSettings.init_path`).

The head's inputs are standardised with a mean and scale fixed when the head is created (from
the embeddings of the dataset it is first trained on) and saved with it, so a loaded head sees
new data exactly as it saw its training data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bds_core.encoders import (
    DEFAULT_ENCODER,
    DEFAULT_MAX_TOKENS,
    ENCODER_NAMES,
    EmbeddingCache,
    EncoderInfo,
    build_encoder,
    embed_examples,
)
from bds_core.schedulers.base import (
    DataScheduler,
    SchedulerContext,
    SchedulerSettings,
    initial_logit,
)
from bds_core.setting_fields import check_settings, setting_fields

HEAD_KINDS: tuple[str, ...] = ("mlp", "linear")
SCHEDULER_FORMAT = "bds-neural-scheduler"
SCHEDULER_FORMAT_VERSION = 1
HEAD_FILE = "head.safetensors"
CONFIG_FILE = "scheduler.json"
DEFAULT_THRESHOLD = 0.5


class SchedulerFileError(ValueError):
    """A saved scheduler cannot be used (missing files, wrong format, wrong encoder)."""


@dataclass
class NeuralOptions:
    """Options of the neural scheduler, from `SchedulerSettings.options`."""

    encoder: str = field(
        default=DEFAULT_ENCODER,
        metadata={"help": "frozen text encoder: 'minilm-l6-v2', 'minilm-static' or 'llm-hidden'"},
    )
    head: str = field(default="mlp", metadata={"help": "head f_phi: 'mlp' (2 layers) or 'linear'"})
    # Upper limits: these options reach the service's method.bds, and a head or an encoder
    # window far past them is a memory error, not a setting.
    hidden: int = field(
        default=128, metadata={"help": "hidden width of the MLP head", "ge": 1, "le": 4096}
    )
    max_tokens: int = field(
        default=DEFAULT_MAX_TOKENS,
        metadata={"help": "encoder token limit per example", "ge": 8, "le": 8192},
    )

    def __post_init__(self) -> None:
        if self.encoder not in ENCODER_NAMES:
            raise ValueError(
                f"neural scheduler encoder must be one of {', '.join(ENCODER_NAMES)}; "
                f"got {self.encoder!r}"
            )
        if self.head not in HEAD_KINDS:
            raise ValueError(
                f"neural scheduler head must be one of {', '.join(HEAD_KINDS)}; got {self.head!r}"
            )
        check_settings(self, _OPTION_FIELDS, "neural scheduler")

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> NeuralOptions:
        """Validated options; unknown keys are refused by name."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"unknown neural scheduler option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(options))


_OPTION_FIELDS = setting_fields(NeuralOptions)


class SafetyHead(nn.Module):
    """f_phi: standardised embedding -> one safety logit per example.

    The last layer starts at zero, so before training every logit is `initial_value` and every
    weight is 1.
    """

    def __init__(
        self,
        input_dim: int,
        kind: str = "mlp",
        hidden: int = 128,
        input_mean: torch.Tensor | None = None,
        input_scale: torch.Tensor | None = None,
        initial_value: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {', '.join(HEAD_KINDS)}; got {kind!r}")
        self.input_dim = input_dim
        self.kind = kind
        self.hidden = hidden
        mean = torch.zeros(input_dim) if input_mean is None else input_mean.detach().float().clone()
        scale = (
            torch.ones(input_dim) if input_scale is None else input_scale.detach().float().clone()
        )
        if mean.shape != (input_dim,) or scale.shape != (input_dim,):
            raise ValueError(f"input_mean and input_scale must have shape ({input_dim},)")
        self.input_mean: torch.Tensor
        self.input_scale: torch.Tensor
        self.register_buffer("input_mean", mean)
        self.register_buffer("input_scale", scale)
        output: nn.Linear
        if kind == "linear":
            output = nn.Linear(input_dim, 1)
            self.net: nn.Module = output
        else:
            output = nn.Linear(hidden, 1)
            self.net = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), output)
        nn.init.zeros_(output.weight)
        nn.init.constant_(output.bias, initial_value)

    @classmethod
    def for_embeddings(
        cls, embeddings: torch.Tensor, kind: str, hidden: int, initial_value: float = 0.0
    ) -> SafetyHead:
        """A fresh head whose input standardisation is fitted to `embeddings` (n, d).

        Each coordinate is centred and divided by sqrt(d) times its spread, so a standardised
        embedding has norm about 1 whatever the encoder: the same learning rate suits both.
        """
        dim = embeddings.shape[1]
        mean = embeddings.mean(dim=0)
        spread = (
            embeddings.std(dim=0, unbiased=False) if embeddings.shape[0] > 1 else torch.ones(dim)
        )
        scale = spread.clamp_min(1e-4) * math.sqrt(dim)
        return cls(
            dim,
            kind=kind,
            hidden=hidden,
            input_mean=mean,
            input_scale=scale,
            initial_value=initial_value,
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        standardised = (embeddings - self.input_mean) / self.input_scale
        return self.net(standardised).squeeze(-1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "hidden": self.hidden, "input_dim": self.input_dim}


@dataclass(frozen=True)
class MixtureComponent:
    """One Gaussian mode of the logits: its share of the data, mean and spread."""

    weight: float
    mean: float
    std: float


def _component_log_density(values: torch.Tensor, component: MixtureComponent) -> torch.Tensor:
    return (
        -0.5 * ((values - component.mean) / component.std) ** 2
        - math.log(component.std)
        - 0.5 * math.log(2 * math.pi)
    )


def fit_gaussian_mixture(
    values: torch.Tensor, n_components: int, iterations: int = 500
) -> tuple[list[MixtureComponent], float]:
    """EM fit of a 1-D Gaussian mixture: components sorted by mean, and the log-likelihood."""
    data = values.detach().double().flatten()
    spread = max(float(data.std()), 1e-6)
    floor = 1e-2 * spread
    quantiles = [0.05 + 0.9 * k / max(n_components - 1, 1) for k in range(n_components)]
    means = [torch.quantile(data, q).item() for q in quantiles]
    stds = [spread / n_components] * n_components
    weights = [1.0 / n_components] * n_components
    log_likelihood = -math.inf
    for _ in range(iterations):
        components = [
            MixtureComponent(w, m, s) for w, m, s in zip(weights, means, stds, strict=True)
        ]
        joint = torch.stack(
            [math.log(max(c.weight, 1e-12)) + _component_log_density(data, c) for c in components]
        )
        total = torch.logsumexp(joint, dim=0)
        new_log_likelihood = float(total.sum())
        responsibilities = torch.exp(joint - total)
        mass = responsibilities.sum(dim=1)
        if float(mass.min()) < 1e-9:
            break
        means = [float((r * data).sum() / m) for r, m in zip(responsibilities, mass, strict=True)]
        stds = [
            max(math.sqrt(float((r * (data - mu) ** 2).sum() / m)), floor)
            for r, m, mu in zip(responsibilities, mass, means, strict=True)
        ]
        weights = [float(m) / data.numel() for m in mass]
        converged = abs(new_log_likelihood - log_likelihood) < 1e-9 * max(1.0, abs(log_likelihood))
        log_likelihood = new_log_likelihood
        if converged:
            break
    components = sorted(
        (MixtureComponent(w, m, s) for w, m, s in zip(weights, means, stds, strict=True)),
        key=lambda c: c.mean,
    )
    return components, log_likelihood


@dataclass
class ScoreCalibration:
    """Label-free mapping from safety logits to a harm score in [0, 1].

    Fitted on the logits of the pretraining data as a 1-D Gaussian mixture (EM, no labels) of
    2 or 3 modes, the number chosen by BIC (several benign tasks can form several benign
    modes). The mode with the lowest mean is the 'harmful' one, the others together are
    'benign'. The harm score of a logit is its posterior probability under the harmful mode
    with equal priors for 'harmful' and 'benign', evaluated at the logit clamped to
    [harmful mean, next mode's mean] so the score never rises with the logit (a broad mode
    would otherwise win both tails). An example is flagged when its score reaches `threshold`.
    """

    components: list[MixtureComponent]
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        if len(self.components) < 2:
            raise ValueError("calibration needs at least two mixture components")
        if any(not c.std > 0 for c in self.components):
            raise ValueError("calibration component spreads must be positive")
        self.components = sorted(self.components, key=lambda c: c.mean)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"calibration threshold must lie in (0, 1), got {self.threshold}")

    @property
    def harmful(self) -> MixtureComponent:
        return self.components[0]

    @property
    def pretraining_harmful_share(self) -> float:
        """Estimated share of harmful examples in the pretraining data."""
        return self.harmful.weight

    def _log_ratio(self, logits: torch.Tensor) -> torch.Tensor:
        """log p(logit | harmful) - log p(logit | benign), benign being the other modes."""
        values = logits.double()
        benign = self.components[1:]
        benign_total = sum(c.weight for c in benign)
        benign_log = torch.logsumexp(
            torch.stack(
                [
                    math.log(max(c.weight / benign_total, 1e-12))
                    + _component_log_density(values, c)
                    for c in benign
                ]
            ),
            dim=0,
        )
        return _component_log_density(values, self.harmful) - benign_log

    def harm_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Harm score in [0, 1] of each logit (1 = looks harmful); non-increasing in the logit."""
        clamped = logits.double().clamp(self.harmful.mean, self.components[1].mean)
        return torch.sigmoid(self._log_ratio(clamped)).float()

    def estimate_harmful_share(self, logits: torch.Tensor, iterations: int = 200) -> float:
        """Share of harmful examples in a dataset, by re-fitting only the harmful prior (EM).

        The mode shapes stay as calibrated; only the prior adapts to the dataset (Saerens et
        al., 2002), which corrects the bias of simply counting flags.
        """
        if logits.numel() == 0:
            return 0.0
        # Clamped as in `harm_scores`: a broad harmful mode must not claim the far benign tail.
        clamped = logits.double().clamp(self.harmful.mean, self.components[1].mean)
        log_ratio = self._log_ratio(clamped)
        share = 0.5
        for _ in range(iterations):
            prior_logit = math.log(max(share, 1e-12)) - math.log(max(1 - share, 1e-12))
            updated = float(torch.sigmoid(log_ratio + prior_logit).mean())
            if abs(updated - share) < 1e-7:
                share = updated
                break
            share = updated
        return share

    @classmethod
    def fit(cls, logits: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> ScoreCalibration:
        """Fit 2- and 3-mode mixtures to the logits (no labels) and keep the one BIC prefers."""
        values = logits.detach().double().flatten()
        if values.numel() < 4:
            raise ValueError(f"calibration needs at least 4 logits, got {values.numel()}")
        if not bool(torch.isfinite(values).all()):
            raise ValueError("calibration logits must be finite")
        centre, spread = float(values.mean()), float(values.std())
        if spread < 1e-6:
            # No spread, no second mode: every logit is 'benign', with a harmful mode 3 units
            # below it so that a lower logit seen later is scored as more harmful.
            return cls(
                components=[
                    MixtureComponent(0.0, centre - 3.0, 1.0),
                    MixtureComponent(1.0, centre, 1.0),
                ],
                threshold=threshold,
            )
        best: tuple[float, list[MixtureComponent]] | None = None
        for n_components in (2, 3):
            if n_components > 2 and values.numel() < 4 * n_components:
                continue
            components, log_likelihood = fit_gaussian_mixture(values, n_components)
            bic = -2 * log_likelihood + (3 * n_components - 1) * math.log(values.numel())
            if best is None or bic < best[0]:
                best = (bic, components)
        assert best is not None
        return cls(components=best[1], threshold=threshold)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "gaussian-mixture",
            "components": [asdict(c) for c in self.components],
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScoreCalibration:
        return cls(
            components=[
                MixtureComponent(float(c["weight"]), float(c["mean"]), float(c["std"]))
                for c in data["components"]
            ],
            threshold=float(data.get("threshold", DEFAULT_THRESHOLD)),
        )


class NeuralScheduler(DataScheduler):
    """w = transform(f_phi(z)) over frozen embeddings z (N, d) of the customer examples."""

    def __init__(
        self,
        settings: SchedulerSettings,
        embeddings: torch.Tensor,
        head: SafetyHead,
        encoder: EncoderInfo,
        calibration: ScoreCalibration | None = None,
        provenance: Mapping[str, Any] | None = None,
    ) -> None:
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must have shape (N, d), got {tuple(embeddings.shape)}")
        if embeddings.shape[1] != head.input_dim:
            raise ValueError(
                f"embeddings have {embeddings.shape[1]} dimensions "
                f"but the head expects {head.input_dim}"
            )
        if encoder.dim != head.input_dim:
            raise ValueError(
                f"encoder {encoder.name} gives {encoder.dim}-d embeddings, "
                f"the head expects {head.input_dim}"
            )
        super().__init__(embeddings.shape[0], settings)
        # Not persistent: embeddings are recomputed (from the cache) on resume, and checkpoints
        # stay the size of the head.
        self.embeddings: torch.Tensor
        self.register_buffer("embeddings", embeddings.detach().float().clone(), persistent=False)
        self.head = head
        self.encoder = encoder
        self.calibration = calibration
        self.provenance = dict(provenance or {})

    def logits_for(self, indices: torch.Tensor) -> torch.Tensor:
        return self.head(self.embeddings[indices])

    def all_logits(self) -> torch.Tensor:
        return self.head(self.embeddings)

    def save(
        self, path: str | Path, provenance: Mapping[str, Any] | None = None, calibrate: bool = True
    ) -> Path:
        """Save the head (see `save_scheduler`); calibrates on this dataset's logits if asked."""
        with torch.no_grad():
            logits = self.all_logits().detach().cpu()
        calibration = (
            ScoreCalibration.fit(logits)
            if calibrate or self.calibration is None
            else self.calibration
        )
        merged = {**self.provenance, **(provenance or {})}
        return save_scheduler(path, self.head, self.encoder, calibration, merged)


@dataclass
class PretrainedScheduler:
    """A scheduler loaded from disk: head, encoder identity, calibration and provenance."""

    path: Path
    head: SafetyHead
    encoder: EncoderInfo
    calibration: ScoreCalibration
    max_tokens: int
    provenance: dict[str, Any]
    config: dict[str, Any]

    def check_encoder(self, encoder: EncoderInfo) -> None:
        """Refuse an encoder other than the one the head was trained on."""
        if encoder.name != self.encoder.name or encoder.version != self.encoder.version:
            raise SchedulerFileError(
                f"scheduler {self.path} was trained on encoder {self.encoder.name} "
                f"(version {self.encoder.version}), but the embeddings come from {encoder.name} "
                f"(version {encoder.version}); use the same encoder or pretrain a new scheduler"
            )


def save_scheduler(
    path: str | Path,
    head: SafetyHead,
    encoder: EncoderInfo,
    calibration: ScoreCalibration,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write `head.safetensors` and `scheduler.json` into the folder `path`; return it."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.detach().cpu().contiguous().float()
        for name, tensor in head.state_dict().items()
    }
    save_file(state, str(folder / HEAD_FILE), metadata={"format": SCHEDULER_FORMAT})
    max_tokens = _max_tokens_of(encoder)
    config = {
        "format": SCHEDULER_FORMAT,
        "format_version": SCHEDULER_FORMAT_VERSION,
        "encoder": {**encoder.to_dict(), "max_tokens": max_tokens},
        "head": head.config(),
        "calibration": calibration.to_dict(),
        "threshold": calibration.threshold,
        "provenance": dict(provenance or {}),
    }
    temporary = folder / (CONFIG_FILE + ".tmp")
    temporary.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
    temporary.replace(folder / CONFIG_FILE)
    return folder


def _max_tokens_of(encoder: EncoderInfo) -> int:
    suffix = encoder.version.rsplit("/max", 1)
    return int(suffix[1]) if len(suffix) == 2 and suffix[1].isdigit() else DEFAULT_MAX_TOKENS


def load_scheduler(path: str | Path) -> PretrainedScheduler:
    """Load a scheduler folder written by `save_scheduler`; errors say what is wrong."""
    folder = Path(path)
    config_path, head_path = folder / CONFIG_FILE, folder / HEAD_FILE
    if not config_path.is_file() or not head_path.is_file():
        raise SchedulerFileError(
            f"{folder} is not a saved neural scheduler (needs {CONFIG_FILE} and {HEAD_FILE})"
        )
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise SchedulerFileError(f"{config_path} is not valid JSON: {error}") from error
    if config.get("format") != SCHEDULER_FORMAT:
        raise SchedulerFileError(
            f"{config_path} is not a {SCHEDULER_FORMAT} file (format {config.get('format')!r})"
        )
    if int(config.get("format_version", 0)) > SCHEDULER_FORMAT_VERSION:
        raise SchedulerFileError(
            f"{config_path} has format version {config.get('format_version')}, newer than this "
            f"library understands ({SCHEDULER_FORMAT_VERSION}); upgrade bds"
        )
    try:
        encoder_config = config["encoder"]
        head_config = config["head"]
        encoder = EncoderInfo(
            name=str(encoder_config["name"]),
            version=str(encoder_config["version"]),
            dim=int(encoder_config["dim"]),
        )
        calibration = ScoreCalibration.from_dict(config["calibration"])
        if "threshold" in config:
            calibration.threshold = float(config["threshold"])
        head = SafetyHead(
            int(head_config["input_dim"]),
            kind=str(head_config["kind"]),
            hidden=int(head_config["hidden"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise SchedulerFileError(f"{config_path} is incomplete or invalid: {error}") from error
    if encoder.dim != head.input_dim:
        raise SchedulerFileError(
            f"{config_path}: encoder dim {encoder.dim} differs from head input_dim {head.input_dim}"
        )
    state = load_file(str(head_path))
    try:
        head.load_state_dict(state)
    except RuntimeError as error:
        raise SchedulerFileError(
            f"{head_path} does not match the head described in {config_path}: {error}"
        ) from error
    head.eval()
    return PretrainedScheduler(
        path=folder,
        head=head,
        encoder=encoder,
        calibration=calibration,
        max_tokens=int(encoder_config.get("max_tokens", DEFAULT_MAX_TOKENS)),
        provenance=dict(config.get("provenance", {})),
        config=config,
    )


def embed_for_scheduler(
    encoder_name: str,
    examples: Sequence[Any],
    context: SchedulerContext,
    max_tokens: int,
) -> tuple[torch.Tensor, EncoderInfo]:
    """Embeddings of the run's examples with the named encoder, through the on-disk cache."""
    encoder = build_encoder(
        encoder_name, model=context.model, tokenizer=context.tokenizer, max_tokens=max_tokens
    )
    embeddings = embed_examples(encoder, examples, cache=EmbeddingCache.default(context.cache_dir))
    return embeddings, encoder.info


def build_neural(settings: SchedulerSettings, context: SchedulerContext) -> DataScheduler:
    """Neural scheduler over the run's examples; starts from `settings.init_path` if given."""
    options = NeuralOptions.from_options(settings.options)
    if len(context.examples) != context.num_examples:
        raise ValueError(
            "the neural scheduler needs the run's examples: "
            f"got {len(context.examples)} for {context.num_examples}"
        )
    pretrained = load_scheduler(settings.init_path) if settings.init_path else None
    if pretrained is not None:
        if "encoder" in settings.options and options.encoder != pretrained.encoder.name:
            raise SchedulerFileError(
                f"scheduler {pretrained.path} was trained on encoder {pretrained.encoder.name}, "
                f"but the options ask for {options.encoder}"
            )
        embeddings, encoder = embed_for_scheduler(
            pretrained.encoder.name, context.examples, context, pretrained.max_tokens
        )
        pretrained.check_encoder(encoder)
        head = pretrained.head
        head.train()
        calibration: ScoreCalibration | None = pretrained.calibration
        provenance: dict[str, Any] = {
            "initialised_from": str(pretrained.path),
            "previous": pretrained.provenance,
        }
    else:
        embeddings, encoder = embed_for_scheduler(
            options.encoder, context.examples, context, options.max_tokens
        )
        # A private RNG stream: the head's init is reproducible and the run's RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            head = SafetyHead.for_embeddings(
                embeddings,
                options.head,
                options.hidden,
                initial_value=initial_logit(settings.transform),
            )
        calibration, provenance = None, {}
    scheduler = NeuralScheduler(settings, embeddings, head, encoder, calibration, provenance)
    return scheduler.to(context.device)


__all__ = [
    "CONFIG_FILE",
    "HEAD_FILE",
    "HEAD_KINDS",
    "MixtureComponent",
    "NeuralOptions",
    "NeuralScheduler",
    "PretrainedScheduler",
    "SafetyHead",
    "SchedulerFileError",
    "ScoreCalibration",
    "build_neural",
    "embed_for_scheduler",
    "fit_gaussian_mixture",
    "load_scheduler",
    "save_scheduler",
]
