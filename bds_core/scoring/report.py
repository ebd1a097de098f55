"""The per-dataset safety report: a versioned JSON document, a markdown summary and a histogram.

The JSON shape is defined by the pydantic models below; `safety_report.schema.json` next to this
file is generated from them (`python -m bds_core.scoring.schema`) and is the contract for the
API and the dashboard. Any change to the shape bumps `SCHEMA_VERSION`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal["1.0"] = "1.0"
HISTOGRAM_BINS = 10
TEXT_PREVIEW_CHARS = 400


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchedulerSummary(_Strict):
    """Which scheduler scored the data."""

    path: str = Field(description="folder of the saved scheduler")
    encoder: str = Field(description="frozen text encoder name")
    encoder_version: str = Field(description="encoder version (weights digest and token limit)")
    head: str = Field(description="head kind: 'mlp' or 'linear'")
    threshold: float = Field(
        ge=0, le=1, description="harm score at or above which an example is flagged"
    )


class ExampleScore(_Strict):
    """One example's scores."""

    index: int = Field(ge=0, description="0-based position in the dataset")
    id: str = Field(description="stable example id")
    line: int = Field(ge=0, description="1-based source line (0 if not from a file)")
    weight: float = Field(
        ge=0, description="BDS weight, N*softmax of the logits over the dataset (mean 1)"
    )
    harm_score: float = Field(
        ge=0, le=1, description="normalised safety score: 0 looks benign, 1 looks harmful"
    )
    flagged: bool = Field(description="harm_score >= threshold")
    logit: float = Field(description="raw safety logit of the scheduler head (higher = safer)")
    category: str | None = Field(
        default=None, description="metadata.category, when the data has one"
    )


class FlaggedExample(_Strict):
    """A flagged example with its text, for review."""

    index: int = Field(ge=0)
    id: str
    line: int = Field(ge=0)
    harm_score: float = Field(ge=0, le=1)
    weight: float = Field(ge=0)
    category: str | None = None
    prompt: str = Field(description=f"the user turns, cut to {TEXT_PREVIEW_CHARS} characters")
    answer: str = Field(description=f"the assistant answer, cut to {TEXT_PREVIEW_CHARS} characters")


class Histogram(_Strict):
    """Counts of harm scores in equal-width bins over [0, 1]."""

    bin_edges: list[float] = Field(description=f"{HISTOGRAM_BINS + 1} edges from 0 to 1")
    counts: list[int] = Field(description=f"{HISTOGRAM_BINS} counts; the last bin includes 1.0")


class CategoryCount(_Strict):
    """Scores of the examples that carry one metadata.category."""

    category: str
    n_examples: int = Field(ge=0)
    n_flagged: int = Field(ge=0)
    mean_harm_score: float = Field(ge=0, le=1)


class LabelEvaluation(_Strict):
    """How well the scores match metadata.label, when the data carries labels (evaluation only)."""

    n_labelled: int = Field(ge=0)
    n_harmful: int = Field(ge=0)
    auroc: float | None = Field(
        description="AUROC of harm_score for label 'harmful' (None if one class only)"
    )
    recall_at_5pct_fpr: float | None = Field(
        description="share of harmful examples flagged at the score cut with 5% false positives"
    )
    flagged_precision: float | None = Field(
        description="share of flagged labelled examples that are harmful"
    )
    flagged_recall: float | None = Field(description="share of harmful examples that are flagged")


class Timing(_Strict):
    """How long scoring took."""

    elapsed_s: float = Field(ge=0)
    examples_per_second: float = Field(ge=0)
    n_encoded: int = Field(ge=0, description="examples embedded now (the rest came from the cache)")


class SafetyReport(_Strict):
    """Safety report of one dataset, produced by the pretrained amortized scheduler."""

    schema_version: Literal["1.0"] = SCHEMA_VERSION
    created_at: str = Field(description="ISO 8601 UTC time of scoring")
    scheduler: SchedulerSummary
    n_examples: int = Field(ge=0)
    n_flagged: int = Field(ge=0)
    flagged_share: float = Field(ge=0, le=1, description="n_flagged / n_examples")
    harmful_share_estimate: float = Field(
        ge=0,
        le=1,
        description="estimated share of harmful examples (mixture prior re-fitted to this dataset)",
    )
    mean_harm_score: float = Field(ge=0, le=1)
    histogram: Histogram
    categories: list[CategoryCount] = Field(
        description="per metadata.category, empty when the data has none"
    )
    top_flagged: list[FlaggedExample] = Field(
        description="flagged examples, highest harm score first"
    )
    examples: list[ExampleScore] = Field(description="every example, in dataset order")
    label_evaluation: LabelEvaluation | None = Field(
        default=None, description="present only when examples carry metadata.label"
    )
    timing: Timing

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (the versioned schema)."""
        return self.model_dump(mode="json")

    def to_json(self, indent: int | None = 2) -> str:
        return self.model_dump_json(indent=indent)

    def to_markdown(self, max_examples: int = 10) -> str:
        """A readable summary: headline numbers, categories and the top flagged examples."""
        lines = [
            "# Safety report",
            "",
            f"- Examples: {self.n_examples}",
            f"- Flagged (harm score >= {self.scheduler.threshold:.2f}): "
            f"{self.n_flagged} ({100 * self.flagged_share:.1f}%)",
            f"- Estimated harmful share: {100 * self.harmful_share_estimate:.1f}%",
            f"- Mean harm score: {self.mean_harm_score:.3f}",
            f"- Scheduler: `{self.scheduler.path}` "
            f"(encoder {self.scheduler.encoder}, head {self.scheduler.head})",
            f"- Speed: {self.timing.examples_per_second:.1f} examples/s "
            f"({self.timing.n_encoded} encoded, {self.n_examples - self.timing.n_encoded} "
            f"from cache, {self.timing.elapsed_s:.2f} s)",
        ]
        if self.label_evaluation is not None:
            evaluation = self.label_evaluation
            lines.append(
                f"- Against labels ({evaluation.n_labelled} labelled, "
                f"{evaluation.n_harmful} harmful): AUROC {_fmt(evaluation.auroc)}, "
                f"recall at 5% FPR {_fmt(evaluation.recall_at_5pct_fpr)}, "
                f"precision of flags {_fmt(evaluation.flagged_precision)}, "
                f"recall of flags {_fmt(evaluation.flagged_recall)}"
            )
        lines += ["", "## Harm score histogram", "", "| score | examples |", "|---|---|"]
        edges = self.histogram.bin_edges
        for index, count in enumerate(self.histogram.counts):
            lines.append(f"| {edges[index]:.1f}-{edges[index + 1]:.1f} | {count} |")
        if self.categories:
            lines += [
                "",
                "## Categories",
                "",
                "| category | examples | flagged | mean harm score |",
                "|---|---|---|---|",
            ]
            for category in self.categories:
                lines.append(
                    f"| {_cell(category.category)} | {category.n_examples} | {category.n_flagged} "
                    f"| {category.mean_harm_score:.3f} |"
                )
        lines += ["", "## Top flagged examples", ""]
        if not self.top_flagged:
            lines.append("None.")
        for entry in self.top_flagged[:max_examples]:
            lines += [
                f"### line {entry.line} · `{entry.id}` · harm score {entry.harm_score:.3f} "
                f"· weight {entry.weight:.3f}" + (f" · {entry.category}" if entry.category else ""),
                "",
                f"> **prompt:** {_quote(entry.prompt)}",
                ">",
                f"> **answer:** {_quote(entry.answer)}",
                "",
            ]
        return "\n".join(lines).rstrip() + "\n"

    def save_histogram_png(self, path: str | Path) -> Path:
        """Draw the harm-score histogram (with the flag threshold) to a PNG file."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        figure, axes = plt.subplots(figsize=(6, 3.5), dpi=100)
        try:
            edges = self.histogram.bin_edges
            widths = [edges[i + 1] - edges[i] for i in range(len(self.histogram.counts))]
            colours = [
                "#c0392b" if edges[i] >= self.scheduler.threshold else "#2e86c1"
                for i in range(len(widths))
            ]
            axes.bar(
                edges[:-1],
                self.histogram.counts,
                width=widths,
                align="edge",
                color=colours,
                edgecolor="white",
            )
            axes.axvline(
                self.scheduler.threshold,
                color="black",
                linestyle="--",
                linewidth=1,
                label="flag threshold",
            )
            axes.set_xlim(0, 1)
            axes.set_xlabel("harm score (0 benign, 1 harmful)")
            axes.set_ylabel("examples")
            axes.set_title(
                f"{self.n_examples} examples, {self.n_flagged} flagged, "
                f"estimated harmful {100 * self.harmful_share_estimate:.1f}%"
            )
            axes.legend(loc="upper center")
            figure.tight_layout()
            figure.savefig(target)
        finally:
            plt.close(figure)
        return target


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _quote(text: str) -> str:
    return text.replace("\n", " ").strip() or "(empty)"


__all__ = [
    "HISTOGRAM_BINS",
    "SCHEMA_VERSION",
    "CategoryCount",
    "ExampleScore",
    "FlaggedExample",
    "Histogram",
    "LabelEvaluation",
    "SafetyReport",
    "SchedulerSummary",
    "Timing",
]
