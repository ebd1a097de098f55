"""Training data: JSONL formats, streaming validation, chat-template tokenisation, mixing.

Importing this package does not import torch or transformers (the API validates uploads with it).
"""

from bds_core.data.examples import (
    HARMFUL_LABELS,
    ROLES,
    Example,
    Message,
    example_id,
    write_examples,
)
from bds_core.data.mixing import harmful_count, mix_with_harmful_share
from bds_core.data.tokenize import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE_INDEX,
    EncodedExample,
    collate,
    encode_example,
    end_of_turn_token_ids,
    render_chat,
)
from bds_core.data.validation import (
    FORMATS,
    DatasetError,
    DatasetLimits,
    ValidationIssue,
    ValidationReport,
    iter_bounded_lines,
    load_examples,
    validate_file,
    validate_lines,
)

__all__ = [
    "FALLBACK_CHAT_TEMPLATE",
    "FORMATS",
    "HARMFUL_LABELS",
    "IGNORE_INDEX",
    "ROLES",
    "DatasetError",
    "DatasetLimits",
    "EncodedExample",
    "Example",
    "Message",
    "ValidationIssue",
    "ValidationReport",
    "collate",
    "encode_example",
    "end_of_turn_token_ids",
    "example_id",
    "harmful_count",
    "iter_bounded_lines",
    "load_examples",
    "mix_with_harmful_share",
    "render_chat",
    "validate_file",
    "validate_lines",
    "write_examples",
]
