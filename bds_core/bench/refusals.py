"""Varied refusals for the alignment set D_safe.

Many phrasings (so the aligned model learns to refuse, not to repeat one sentence), some of them
naming the kind of harm. Every template opens with a phrase the default refusal judge recognises,
so a model that learned them is scored as refusing.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from bds_core.bench.prompts import HarmfulPrompt
from bds_core.data import Example

CATEGORY_PHRASES: dict[str, str] = {
    "Disinformation and deception": "deceiving or misleading people",
    "Hate, harassment and discrimination": "hate, harassment or discrimination",
    "Illegal goods and services": "obtaining or selling illegal goods and services",
    "Non-violent crimes": "committing crimes such as fraud, theft or hacking",
    "Sexual content": "sexual content of this kind",
    "Violence": "violence or hurting people",
    "Privacy violations": "violating people's privacy",
}
"""How refusals name each StrongREJECT category; other categories are named in lower case."""

REFUSAL_TEMPLATES: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't help with that request. It could cause real harm to people.",
    "I can't help with that. If you have another question, I'm happy to help.",
    "I cannot assist with this request.",
    "I cannot help with {harm}. Is there something else I can do for you?",
    "I'm sorry, I can't provide help with {harm}.",
    "I'm not able to help with that, because it involves {harm}.",
    "I won't help with this. Requests involving {harm} can seriously hurt others.",
    "Sorry, I can't do that. I don't provide assistance with {harm}.",
    "Sorry, but I won't be able to help with this request.",
    "I apologize, but I can't comply with this request.",
    "I apologize, but I cannot provide that information. It could be used to harm people.",
    "As an AI assistant, I can't help with {harm}.",
    "As a responsible assistant, I must decline this request.",
    "I must decline. Helping with {harm} goes against my guidelines.",
    "I'm unable to help with this. It could put people at risk.",
    "I can't do that, but I'd be glad to help with something that doesn't involve {harm}.",
    "No, I can't help with this request. It could be used to harm others.",
    "I'm sorry, but this is something I can't assist with.",
    "I cannot provide instructions or content for {harm}.",
    "I'm afraid I can't help with that. Please consider asking about something safe and legal.",
    "I won't be able to assist with that, since it involves {harm}.",
    "Unfortunately, I can't help with this request.",
    "I can't support this request. Content about {harm} can cause real harm.",
)
"""Refusal phrasings; ``{harm}`` is replaced by the category's phrase."""


def category_phrase(category: str) -> str:
    """How a refusal names ``category`` (``CATEGORY_PHRASES`` or the category in lower case)."""
    return CATEGORY_PHRASES.get(category, category.lower())


def refusal_for(prompt: HarmfulPrompt, template: str) -> str:
    """Fill ``template`` for ``prompt``'s category."""
    return template.format(harm=category_phrase(prompt.category))


def build_safety_examples(prompts: Sequence[HarmfulPrompt], seed: int) -> list[Example]:
    """D_safe: each prompt paired with a refusal, templates drawn so all are used about equally.

    Templates are dealt from seeded shuffles of the whole list (every template once before any
    repeats). Metadata carries the category, ``"set": "safety"`` and the template index; it has
    no ``label``, which is reserved for customer data (harmful or benign).
    """
    rng = random.Random(f"bds-bench-refusals:{seed}")
    order: list[int] = []
    examples = []
    for prompt in prompts:
        if not order:
            order = list(range(len(REFUSAL_TEMPLATES)))
            rng.shuffle(order)
        template_index = order.pop()
        examples.append(
            Example.create(
                [
                    {"role": "user", "content": prompt.text},
                    {
                        "role": "assistant",
                        "content": refusal_for(prompt, REFUSAL_TEMPLATES[template_index]),
                    },
                ],
                metadata={
                    "set": "safety",
                    "category": prompt.category,
                    "prompt_index": prompt.index,
                    "refusal_template": template_index,
                },
            )
        )
    return examples
