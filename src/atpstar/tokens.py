"""Tokenizer helpers shared by prompt pairs, pairs files and the task builders, including the
beginning-of-sequence (BOS) token put in front of every prompt.

BOS follows TransformerLens's ``prepend_bos``: with ``bos=True`` (the default everywhere) a prompt
starts with exactly one BOS token, whether or not the tokenizer adds one itself (never two); with
``bos=False`` it starts with the text's first token. The BOS token is the tokenizer's ``bos_token``,
else its end-of-text token (as TransformerLens does for GPT-2-style tokenizers); a tokenizer with
neither gets none. BOS is position 0, so the text's first token is position 1. Answer and distractor
tokens never get one (:func:`word_ids`).
"""

from __future__ import annotations


def tokenizer(model):
    return getattr(model, "tokenizer", model)


def bos_id(tok) -> int | None:
    """The model's beginning-of-sequence token id: the tokenizer's BOS token, else its end-of-text (EOS)
    token, else ``None`` (no such token)."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tok, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def encode(tok, text: str, bos: bool = True) -> list[int]:
    """Prompt ids: the text's tokens, with the model's BOS token in front when ``bos`` (and the model has
    one; a text that already starts with it keeps just that one)."""
    return with_bos(tok, word_ids(tok, text), bos)


def with_bos(tok, ids: list[int], bos: bool = True) -> list[int]:
    """``ids`` with the model's BOS token in front when ``bos``, unless they already start with it."""
    first = bos_id(tok) if bos else None
    if first is None or list(ids[:1]) == [first]:
        return list(ids)
    return [first, *ids]


def word_ids(tok, text: str) -> list[int]:
    """Ids of a text fragment without special tokens (e.g. an answer like ``" Mary"``)."""
    return tok(text, add_special_tokens=False)["input_ids"]
