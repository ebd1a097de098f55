"""The inference engine: base models loaded once, LoRA adapters from an LRU, batched decoding.

One engine thread owns the models. Callers ``submit`` a chat request naming a model (a base
model spec, or the name an adapter was registered under) and get its text back through a
callback, piece by piece as it is generated. Requests waiting when the thread becomes free are
grouped by base model and adapter, and each group is decoded as one left-padded batch with a
shared KV cache; every row keeps its own sampling parameters, seed and stop conditions.

An adapter is registered by name and folder (``register_adapter``); its weights are read on
the first request that needs it, and that request waits for the load instead of failing. At
most ``max_loaded_adapters`` adapters stay in memory per base model; the least recently used
one is dropped first (it is read again from its folder when asked for).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from bds_core.data.tokenize import end_of_turn_token_ids, render_chat

if TYPE_CHECKING:
    from peft import PeftModel

    from bds_core.models.loading import LoadedModel

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


class EngineRequestError(ValueError):
    """A request the engine cannot serve as asked (too long a prompt, bad parameters)."""

    def __init__(self, message: str, *, code: str = "invalid_request", param: str | None = None):
        super().__init__(message)
        self.code = code
        self.param = param


class ModelNotServedError(KeyError):
    """The request names a model that is neither a served base model nor a registered adapter."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "model not served"


class AdapterError(ValueError):
    """An adapter folder that cannot be registered (missing, not an adapter, foreign base)."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens: ``temperature`` 0 is greedy; ``top_p`` keeps the nucleus."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise EngineRequestError(
                f"max_tokens must be positive, got {self.max_tokens}", param="max_tokens"
            )
        if not 0 <= self.temperature <= 2:
            raise EngineRequestError(
                f"temperature must be in [0, 2], got {self.temperature}", param="temperature"
            )
        if not 0 < self.top_p <= 1:
            raise EngineRequestError(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        if any(not text for text in self.stop):
            raise EngineRequestError("stop sequences must not be empty", param="stop")


@dataclass(frozen=True)
class Completion:
    """A finished answer with its token counts."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


Event = (
    tuple[Literal["delta"], str]
    | tuple[Literal["done"], Completion]
    | tuple[Literal["error"], Exception]
)
"""What a request's callback receives: text pieces, then one ``done`` or one ``error``."""


@dataclass(eq=False)
class RequestHandle:
    """A submitted request; ``cancel()`` stops its generation at the next token."""

    model: str
    base: str
    adapter: str | None
    messages: list[dict[str, str]]
    params: SamplingParams
    on_event: Callable[[Event], None]
    cancelled: bool = False

    def cancel(self) -> None:
        """Stop generating for this request (the client went away)."""
        self.cancelled = True

    def emit(self, event: Event) -> None:
        """Hand ``event`` to the caller; a callback that fails cancels the request, so one
        broken caller (a closed event loop, say) never stops the batch or the engine."""
        try:
            self.on_event(event)
        except Exception:
            logger.exception("the callback of a request for %s failed; cancelling it", self.model)
            self.cancelled = True


@dataclass(frozen=True)
class _AdapterSource:
    path: Path
    base: str


@dataclass
class _ServedModel:
    loaded: LoadedModel
    peft: PeftModel | None = None
    # Adapters in memory: public name -> peft adapter name, least recently used first.
    resident: OrderedDict[str, str] = field(default_factory=OrderedDict)
    serial: int = 0


def adapter_base_model(path: Path) -> str:
    """The base model an adapter folder was trained from.

    ``bds_adapter.json`` (written by the BDS trainer) names the model spec it was trained on;
    other PEFT folders fall back to ``adapter_config.json``'s ``base_model_name_or_path``.
    """
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} is not a PEFT adapter folder (no adapter_config.json)")
    for name, key in (
        ("bds_adapter.json", "base_model"),
        ("adapter_config.json", "base_model_name_or_path"),
    ):
        try:
            content = json.loads((path / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and isinstance(content.get(key), str) and content[key]:
            return str(content[key])
    raise AdapterError(f"adapter {path} does not say which base model it was trained from")


Loader = Callable[[str], "LoadedModel"]


def _default_loader(device: str | None) -> Loader:
    def load(spec: str) -> LoadedModel:
        from bds_core.models.loading import load_model

        return load_model(spec, device=device, padding_side="left")

    return load


class InferenceEngine:
    """Serve chat completions for base models and registered LoRA adapters, batched.

    ``base_models`` are the model specs requests may name directly and adapters may be
    trained on (None: any spec ``load_model`` accepts). Models load on first use.
    """

    def __init__(
        self,
        base_models: Sequence[str] | None = None,
        *,
        device: str | None = None,
        max_loaded_adapters: int = 8,
        max_batch_size: int = 8,
        loader: Loader | None = None,
    ) -> None:
        if max_loaded_adapters <= 0 or max_batch_size <= 0:
            raise ValueError("max_loaded_adapters and max_batch_size must be positive")
        self.base_models = list(base_models) if base_models is not None else None
        self.max_loaded_adapters = max_loaded_adapters
        self.max_batch_size = max_batch_size
        self._loader = loader or _default_loader(device)
        self._adapters: dict[str, _AdapterSource] = {}
        self._lock = threading.Lock()
        self._gate = threading.Lock()  # held by paused(): no batch starts meanwhile
        self._queue: queue.Queue[RequestHandle | None] = queue.Queue()
        self._models: dict[str, _ServedModel] = {}  # touched by the engine thread only
        self.batches_run = 0
        self.largest_batch = 0
        self._thread = threading.Thread(target=self._run, name="inference-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------ registry
    def register_adapter(self, name: str, path: str | Path) -> bool:
        """Serve the adapter in ``path`` as model ``name``; False if the name is taken.

        Only the folder is checked here; its weights load on the first request for it.
        """
        if not name or len(name) > 300:
            raise AdapterError("an adapter name must have 1 to 300 characters")
        folder = Path(path)
        if not folder.is_dir():
            raise AdapterError(f"adapter folder {folder} does not exist")
        base = adapter_base_model(folder)
        if self.base_models is not None and base not in self.base_models:
            raise AdapterError(
                f"adapter {name!r} was trained on {base!r}, which this engine does not serve "
                f"(it serves {', '.join(self.base_models)})"
            )
        with self._lock:
            if name in self._adapters or name in (self.base_models or ()):
                return False
            self._adapters[name] = _AdapterSource(folder.resolve(), base)
        return True

    def unregister_adapter(self, name: str) -> bool:
        """Stop serving adapter ``name`` (it leaves memory with the next batch); False if unknown."""
        with self._lock:
            return self._adapters.pop(name, None) is not None

    def adapters(self) -> dict[str, str]:
        """Registered adapters: name -> base model."""
        with self._lock:
            return {name: source.base for name, source in self._adapters.items()}

    def resolve(self, model: str) -> tuple[str, str | None]:
        """(base model, adapter name or None) for a request's ``model``."""
        with self._lock:
            source = self._adapters.get(model)
        if source is not None:
            return source.base, model
        if self.base_models is None or model in self.base_models:
            return model, None
        raise ModelNotServedError(f"the model {model!r} does not exist")

    # ------------------------------------------------------------------------ requests
    def submit(
        self,
        model: str,
        messages: Sequence[Mapping[str, str]],
        params: SamplingParams,
        on_event: Callable[[Event], None],
    ) -> RequestHandle:
        """Queue a chat request; ``on_event`` is called from the engine thread."""
        if not messages:
            raise EngineRequestError("messages must not be empty", param="messages")
        base, adapter = self.resolve(model)
        handle = RequestHandle(
            model=model,
            base=base,
            adapter=adapter,
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            params=params,
            on_event=on_event,
        )
        self._queue.put(handle)
        return handle

    def generate(
        self, model: str, messages: Sequence[Mapping[str, str]], params: SamplingParams
    ) -> Completion:
        """Blocking convenience: the whole completion of one request."""
        finished = threading.Event()
        outcome: list[Completion | Exception] = []

        def on_event(event: Event) -> None:
            if event[0] == "done" or event[0] == "error":
                outcome.append(event[1])
                finished.set()

        self.submit(model, messages, params, on_event)
        finished.wait()
        result = outcome[0]
        if isinstance(result, Exception):
            raise result
        return result

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Start no new batch inside this block: requests submitted meanwhile are batched
        together when it ends (the batch already running finishes first)."""
        with self._gate:
            yield

    def close(self) -> None:
        """Stop the engine thread after the requests already queued."""
        self._queue.put(None)
        self._thread.join(timeout=60)

    # ------------------------------------------------------------------------ engine thread
    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            with self._gate:
                pass
            pending = [first]
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)  # stop after this round
                    break
                pending.append(item)
            groups: dict[tuple[str, str | None], list[RequestHandle]] = {}
            for handle in pending:
                if not handle.cancelled:
                    groups.setdefault((handle.base, handle.adapter), []).append(handle)
            for (base, adapter), handles in groups.items():
                for start in range(0, len(handles), self.max_batch_size):
                    batch = handles[start : start + self.max_batch_size]
                    try:
                        self._run_batch(base, adapter, batch)
                    except Exception as error:
                        logger.exception("inference batch for %s failed", adapter or base)
                        for handle in batch:
                            handle.emit(("error", error))

    def _served(self, base: str) -> _ServedModel:
        served = self._models.get(base)
        if served is None:
            logger.info("loading base model %s", base)
            loaded = self._loader(base)
            loaded.model.eval()
            served = _ServedModel(loaded=loaded)
            self._models[base] = served
        return served

    def _activate(
        self, served: _ServedModel, adapter: str | None
    ) -> contextlib.AbstractContextManager[Any]:
        """Make ``adapter`` (or none) the active one; the context is the forward's scope."""
        # Drop adapters that were unregistered since they were loaded.
        registered = self.adapters()
        for public, internal in list(served.resident.items()):
            if public not in registered and public != adapter:
                assert served.peft is not None
                served.peft.delete_adapter(internal)
                del served.resident[public]
        if served.peft is not None and not served.resident:
            # No adapter left: take the LoRA layers out again (nothing was merged).
            served.loaded.model = served.peft.unload()
            served.peft = None
        elif served.peft is not None and served.peft.active_adapter not in served.resident.values():
            served.peft.set_adapter(next(reversed(served.resident.values())))
        if adapter is None:
            if served.peft is None:
                return contextlib.nullcontext()
            return served.peft.disable_adapter()
        resident = served.resident.get(adapter)
        if resident is not None:
            internal = resident
        else:
            with self._lock:
                source = self._adapters.get(adapter)
            if source is None:
                raise ModelNotServedError(f"the model {adapter!r} does not exist")
            served.serial += 1
            internal = f"adapter_{served.serial}"
            logger.info("loading adapter %s from %s", adapter, source.path)
            if served.peft is None:
                from peft import PeftModel

                served.peft = PeftModel.from_pretrained(
                    served.loaded.model, str(source.path), adapter_name=internal
                )
            else:
                served.peft.load_adapter(str(source.path), adapter_name=internal)
            served.peft.eval()
            served.resident[adapter] = internal
        served.resident.move_to_end(adapter)
        assert served.peft is not None
        served.peft.set_adapter(internal)
        while len(served.resident) > self.max_loaded_adapters:
            _public, oldest = served.resident.popitem(last=False)
            served.peft.delete_adapter(oldest)
        return contextlib.nullcontext()

    def _run_batch(self, base: str, adapter: str | None, batch: list[RequestHandle]) -> None:
        served = self._served(base)
        tokenizer = served.loaded.tokenizer
        limit = getattr(served.loaded.model.config, "max_position_embeddings", None)
        rows: list[_Row] = []
        for handle in batch:
            ids = list(
                tokenizer(
                    render_chat(tokenizer, handle.messages, add_generation_prompt=True),
                    add_special_tokens=False,
                )["input_ids"]
            )
            if limit is not None and len(ids) + handle.params.max_tokens > limit:
                handle.emit(
                    (
                        "error",
                        EngineRequestError(
                            f"this model's context is {limit} tokens; the messages take "
                            f"{len(ids)} and max_tokens asks for {handle.params.max_tokens} more",
                            code="context_length_exceeded",
                            param="messages",
                        ),
                    )
                )
                continue
            rows.append(_Row(handle, ids, tokenizer))
        if not rows:
            return
        self.batches_run += 1
        self.largest_batch = max(self.largest_batch, len(rows))
        with self._activate(served, adapter):
            model = served.peft if served.peft is not None else served.loaded.model
            self._decode(model, rows, end_of_turn_token_ids(tokenizer), tokenizer.pad_token_id)

    @torch.no_grad()
    def _decode(
        self, model: Any, rows: list[_Row], stop_ids: list[int], pad_id: int | None
    ) -> None:
        pad = pad_id if pad_id is not None else (stop_ids[0] if stop_ids else 0)
        device = next(iter(model.parameters())).device
        longest = max(len(row.prompt) for row in rows)
        input_ids = torch.full((len(rows), longest), pad, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for index, row in enumerate(rows):
            input_ids[index, longest - len(row.prompt) :] = torch.tensor(row.prompt)
            attention[index, longest - len(row.prompt) :] = 1
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        input_ids, attention, positions = (t.to(device) for t in (input_ids, attention, positions))
        cache_keyword = _cache_keyword(model)
        past: Any = None
        current, current_positions = input_ids, positions
        for _step in range(max(row.handle.params.max_tokens for row in rows)):
            output = model(
                input_ids=current,
                attention_mask=attention,
                position_ids=current_positions,
                use_cache=True,
                **{cache_keyword: past},
            )
            past = getattr(output, cache_keyword)
            logits = output.logits[:, -1, :].float().cpu()
            next_tokens: list[int] = []
            for index, row in enumerate(rows):
                if row.finished or row.handle.cancelled:
                    row.finished = True
                    next_tokens.append(pad)
                    continue
                token = row.sample(logits[index])
                next_tokens.append(token)
                row.accept(token, token in stop_ids)
            if all(row.finished for row in rows):
                break
            current = torch.tensor(next_tokens, dtype=torch.long, device=device)[:, None]
            attention = torch.cat([attention, torch.ones_like(current)], dim=1)
            current_positions = current_positions[:, -1:] + 1
        for row in rows:
            row.finish_if_open()


def _cache_keyword(model: Any) -> str:
    """The KV cache's keyword: ``cache`` on newer transformers, ``past_key_values`` before."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    parameters = inspect.signature(type(inner).forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


class _Row:
    """One request inside a batch: its tokens, its text so far and what it has sent."""

    def __init__(self, handle: RequestHandle, prompt: list[int], tokenizer: Any) -> None:
        self.handle = handle
        self.prompt = prompt
        self.tokenizer = tokenizer
        self.generated: list[int] = []
        self.sent = 0  # characters of the answer already sent as deltas
        self.text = ""
        self.finished = False
        params = handle.params
        self.generator: torch.Generator | None = None
        if params.seed is not None and params.temperature > 0:
            self.generator = torch.Generator().manual_seed(params.seed)

    def sample(self, logits: torch.Tensor) -> int:
        params = self.handle.params
        if params.temperature == 0:
            return int(torch.argmax(logits))
        probabilities = torch.softmax(logits / params.temperature, dim=-1)
        if params.top_p < 1:
            ordered, order = torch.sort(probabilities, descending=True)
            outside = ordered.cumsum(-1) - ordered > params.top_p
            ordered[outside] = 0
            probabilities = torch.zeros_like(probabilities).scatter(0, order, ordered)
        return int(torch.multinomial(probabilities, 1, generator=self.generator))

    def accept(self, token: int, is_stop_token: bool) -> None:
        params = self.handle.params
        if is_stop_token:
            self._finish("stop", count_token=True)
            return
        self.generated.append(token)
        self.text = str(self.tokenizer.decode(self.generated, skip_special_tokens=True))
        for stop in params.stop:
            at = self.text.find(stop)
            if at != -1:
                self.text = self.text[:at]
                self._finish("stop")
                return
        if len(self.generated) >= params.max_tokens:
            self._finish("length")
            return
        # Hold back an unfinished UTF-8 character and any tail that may begin a stop sequence.
        safe = len(self.text.rstrip("\ufffd"))
        for stop in params.stop:
            for size in range(min(len(stop) - 1, safe), 0, -1):
                if self.text[:safe].endswith(stop[:size]):
                    safe -= size
                    break
        self._send(safe)

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.handle.emit(("delta", self.text[self.sent : upto]))
            self.sent = upto

    def _finish(self, reason: FinishReason, count_token: bool = False) -> None:
        self._send(len(self.text))
        self.finished = True
        self.handle.emit(
            (
                "done",
                Completion(
                    text=self.text,
                    finish_reason=reason,
                    prompt_tokens=len(self.prompt),
                    completion_tokens=len(self.generated) + (1 if count_token else 0),
                ),
            )
        )

    def finish_if_open(self) -> None:
        if not self.finished:
            self._finish("length")
