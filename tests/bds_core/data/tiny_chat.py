"""A tiny byte-level BPE tokenizer with a ChatML template, and a tiny LLaMA to match.

Built in the test process (milliseconds, deterministic, no downloads). Loaded by path from the
conftest files of tests/bds_core/data and tests/bds_core/eval.
"""

from __future__ import annotations

from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

# A little text so that BPE learns merges: answers then span multi-byte tokens, which is what
# exercises the prefix/boundary logic of encode_example.
_CORPUS = [
    "user\nWhat is two plus two?\nassistant\nThe answer is 4.",
    "system\nYou are a helpful assistant.",
    "Sort these words: pear apple fig. apple fig pear",
    "I cannot help with that request. I'm sorry, but I won't do that.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello there, how are you today? I am fine, thank you.",
] * 4


def build_tokenizer(with_template: bool = True) -> Any:
    """A PreTrainedTokenizerFast: byte-level BPE (about 400 tokens), ChatML, pad and eos."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        unk_token=None,
    )
    if with_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llama(tokenizer: Any, seed: int = 0) -> Any:
    """A randomly initialised 2-layer LLaMA (hidden 64, 4 heads) sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.eval()
    return model
