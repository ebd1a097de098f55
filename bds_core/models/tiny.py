"""``tiny-random-llama``: a deterministic 2-layer LLaMA with a byte-level tokenizer, for tests.

Random weights from a fixed seed, so two builds are identical. The tokenizer maps every byte to
its own token (a byte-level BPE with no merges) and adds ChatML's special tokens, so any text
round-trips and chat templates behave as with a real ChatML model such as SmolLM2.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_SEED = 0
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"

# ChatML without a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def byte_symbols() -> list[str]:
    """The character byte-level BPE uses for each byte value 0..255 (GPT-2's byte alphabet).

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points from 256
    upwards in byte order, so every byte has a visible, unique symbol.
    """
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    symbols: list[str] = []
    shifted = 0
    for byte in range(256):
        if byte in printable:
            symbols.append(chr(byte))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level tokenizer: token id = byte value (0..255), then the three ChatML specials."""
    vocab = {symbol: byte for byte, symbol in enumerate(byte_symbols())}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    backend.add_special_tokens(
        [AddedToken(token, special=True) for token in (IM_START, IM_END, END_OF_TEXT)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=END_OF_TEXT,
        unk_token=None,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.model_max_length = 4096
    return tokenizer


def tiny_llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The tiny LLaMA's config, sized to the tokenizer's vocabulary."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        # Larger than LLaMA's 0.02: with 64-d embeddings that small, the output distribution
        # stays near uniform and a LoRA adapter cannot learn anything in a test's few steps.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_random_llama(
    seed: int = TINY_SEED,
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build the tiny model and its tokenizer in memory; the same seed gives the same weights.

    The global torch RNG is left as it was, so building the model does not shift the random
    stream of the code that asked for it.
    """
    tokenizer = build_tiny_tokenizer()
    config = tiny_llama_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.eval()
    return model, tokenizer


def write_tiny_random_llama(directory: Path, seed: int = TINY_SEED) -> Path:
    """Save the tiny model and tokenizer as a Hugging Face folder in ``directory``."""
    model, tokenizer = build_tiny_random_llama(seed)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
