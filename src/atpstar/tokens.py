"""Tokenizer helpers shared by prompt pairs, pairs files and the task builders."""

from __future__ import annotations


def tokenizer(model):
    return getattr(model, "tokenizer", model)


def encode(tok, text: str) -> list[int]:
    """Prompt ids, with the tokenizer's special tokens (as :meth:`PromptPairs.from_strings` does)."""
    return tok(text, add_special_tokens=True)["input_ids"]


def word_ids(tok, text: str) -> list[int]:
    """Ids of a text fragment without special tokens (e.g. an answer like ``" Mary"``)."""
    return tok(text, add_special_tokens=False)["input_ids"]
