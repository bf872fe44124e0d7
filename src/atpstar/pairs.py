"""Prompt pairs: (clean, noise) token sequences of equal length, with answer/distractor tokens.

Within a pair, clean and noise must have the same number of tokens (positions are aligned; a
pair that is not raises an error naming it). Different pairs may have different lengths: methods
batch pairs of equal length together, and aggregate per-node results with positions
**right-aligned** (the last token of every prompt is at the last position ``T_max - 1``), so that
the position a metric reads is the same node for every pair. With equal-length pairs (the usual
case of one template) positions are simply the token positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch
from torch import Tensor

from . import pairsfile
from .sink import warn_first_position
from .tokens import encode, tokenizer

NO_TOKEN = -1


@dataclass(frozen=True)
class PromptPairs:
    clean: tuple[Tensor, ...]
    """Clean prompts, each a 1-D LongTensor of token ids."""
    noise: tuple[Tensor, ...]
    """Noise prompts, position-aligned with ``clean``."""
    answer: Tensor
    """(pairs,) token id the metric rewards."""
    distractor: Tensor
    """(pairs,) token id of the competing answer, ``-1`` where there is none."""
    metric: object = None
    """Default metric of these pairs (a name, callable or Metric); ``None``: logit_diff if distractors else logprob."""
    texts: tuple = field(default=(), compare=False)
    """Optional ``(clean_text, noise_text)`` per pair, for display."""

    def __post_init__(self) -> None:
        n = len(self.clean)
        if n == 0:
            raise ValueError("no prompt pairs given: pass at least one (clean, noise) pair")
        if len(self.noise) != n or len(self.answer) != n or len(self.distractor) != n:
            raise ValueError(
                f"clean ({n}), noise ({len(self.noise)}), answer ({len(self.answer)}) and distractor "
                f"({len(self.distractor)}) must have one entry per pair"
            )
        for i, (c, x) in enumerate(zip(self.clean, self.noise)):
            if c.ndim != 1 or x.ndim != 1 or len(c) == 0:
                raise ValueError(f"pair {i}: prompts must be non-empty 1-D token id sequences")
            if len(c) != len(x):
                raise ValueError(
                    f"pair {i}: clean prompt has {len(c)} tokens but noise prompt has {len(x)}; "
                    "clean and noise must have the same token length so positions align "
                    "(pick noise words with the same token count, or drop the pair)"
                )
        same = ((self.answer == self.distractor) & (self.distractor != NO_TOKEN)).nonzero().flatten().tolist()
        if same:
            raise ValueError(
                f"pair(s) {same[:10]}: the answer and the distractor are the same token, so the logit "
                "difference is identically 0 and every effect would be 0; give a different distractor "
                "(e.g. the other name) or none (metric 'logprob')"
            )

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_ids(cls, clean, noise, answer, distractor=None, metric=None, texts=()) -> "PromptPairs":
        """From token ids: ``clean``/``noise`` are sequences of id lists, answers are ids."""
        n = len(clean)
        answer_t = _token_ids(answer, "answer")
        if distractor is None:
            distractor = [NO_TOKEN] * n
        distractor_t = _token_ids([NO_TOKEN if d is None else d for d in distractor], "distractor")
        as_t = lambda seqs: tuple(torch.as_tensor(list(s), dtype=torch.long) for s in seqs)  # noqa: E731
        return cls(as_t(clean), as_t(noise), answer_t, distractor_t, metric, tuple(texts))

    @classmethod
    def from_strings(cls, model, clean: Sequence[str], noise: Sequence[str], answer, distractor=None,
                     metric=None, bos: bool = True) -> "PromptPairs":
        """Tokenize prompt strings; answers are strings (exactly one token each, e.g. ``" Mary"``) or ids.

        ``bos=True`` puts the model's beginning-of-sequence token in front of every prompt (position 0;
        one only, also when the tokenizer adds it itself; none if the model has no such token), as
        TransformerLens does; ``bos=False`` leaves it out. Pairs whose prompts differ at their first
        token get a warning (see :mod:`atpstar.sink`)."""
        tok = tokenizer(model)
        clean, noise = _texts(clean, "clean"), _texts(noise, "noise")
        answer = _answers(answer, "answer")
        distractor = None if distractor is None else _answers(distractor, "distractor")
        if len(clean) != len(noise):
            raise ValueError(f"got {len(clean)} clean prompts but {len(noise)} noise prompts")
        clean_ids = [encode(tok, s, bos) for s in clean]
        noise_ids = [encode(tok, s, bos) for s in noise]
        answers = [single_token(tok, a, i, "answer") for i, a in enumerate(answer)]
        distractors = None
        if distractor is not None:
            distractors = [None if d is None else single_token(tok, d, i, "distractor") for i, d in enumerate(distractor)]
        pairs = cls.from_ids(clean_ids, noise_ids, answers, distractors, metric, tuple(zip(clean, noise)))
        warn_first_position(pairs, tok, bos)
        return pairs

    # --- views -----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.clean)

    @property
    def lengths(self) -> list[int]:
        return [len(c) for c in self.clean]

    @property
    def max_len(self) -> int:
        return max(self.lengths)

    def presence(self, pos: Tensor) -> Tensor:
        """(N,) float64 fraction of the pairs whose prompts have each aligned position ``pos`` (prompts are
        right-aligned: a prompt of length n has positions ``max_len − n ..``; 1 when all have one length)."""
        pos = torch.as_tensor(pos)
        lengths, counts = torch.tensor(self.lengths).unique(return_counts=True)
        out = torch.zeros(len(pos), dtype=torch.float64)
        for n, count in zip(lengths.tolist(), counts.tolist()):
            out += count * (pos >= self.max_len - n).double()
        return out / len(self.clean)

    def select(self, idx) -> "PromptPairs":
        """The pairs at indices ``idx`` (a list or 1-D tensor; repeats allowed), same metric."""
        idx = [int(i) for i in (idx.tolist() if isinstance(idx, Tensor) else idx)]
        texts = tuple(self.texts[i] for i in idx) if self.texts else ()
        return PromptPairs(tuple(self.clean[i] for i in idx), tuple(self.noise[i] for i in idx),
                           self.answer[idx], self.distractor[idx], self.metric, texts)

    def groups(self) -> Iterator["LengthGroup"]:
        """Pairs batched by token length (no padding is ever needed inside a group)."""
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(self.lengths):
            by_len.setdefault(n, []).append(i)
        for n, idx in sorted(by_len.items()):
            yield LengthGroup(
                index=torch.tensor(idx),
                clean=torch.stack([self.clean[i] for i in idx]),
                noise=torch.stack([self.noise[i] for i in idx]),
                pairs=self.select(idx),
                offset=self.max_len - n,
            )

    def check_vocab(self, vocab_size: int) -> None:
        for name, seqs in (("clean", self.clean), ("noise", self.noise)):
            for i, s in enumerate(seqs):
                if int(s.max()) >= vocab_size or int(s.min()) < 0:
                    raise ValueError(f"pair {i}: {name} prompt has token ids outside the model's vocabulary (0..{vocab_size - 1})")
        for name, ids, low in (("answer", self.answer, 0), ("distractor", self.distractor, NO_TOKEN)):
            if int(ids.max()) >= vocab_size or int(ids.min()) < low:
                raise ValueError(f"{name} token ids must be in 0..{vocab_size - 1}, got {sorted(set(ids.tolist()))[:10]}")

    def __repr__(self) -> str:
        lens = sorted(set(self.lengths))
        return f"PromptPairs({len(self)} pairs, lengths {lens[0]}..{lens[-1]}, metric={getattr(self.metric, 'name', self.metric)})"


@dataclass(frozen=True)
class LengthGroup:
    """Pairs of one token length: ``clean``/``noise`` are (G, T); ``index`` maps rows to pair indices."""

    index: Tensor
    clean: Tensor
    noise: Tensor
    pairs: PromptPairs
    offset: int
    """Right-alignment offset: this group's position ``t`` is aligned position ``t + offset``."""

    def split(self, size: int) -> Iterator["LengthGroup"]:
        """Consecutive sub-groups of at most ``size`` pairs."""
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        for lo in range(0, len(self.index), size):
            sl = slice(lo, lo + size)
            yield LengthGroup(self.index[sl], self.clean[sl], self.noise[sl],
                              self.pairs.select(range(lo, min(lo + size, len(self.index)))), self.offset)


def _token_ids(values, what: str) -> Tensor:
    """A 1-D LongTensor of token ids; floats, booleans and strings are refused (never silently truncated)."""
    if isinstance(values, (str, int)):
        raise ValueError(f"{what} must be a list of token ids, one per pair, got the single value {values!r}")
    ids = torch.as_tensor(values) if isinstance(values, Tensor) else None
    if ids is None:
        values = list(values)
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, Tensor)) and not hasattr(v, "__index__")]
        if bad:
            raise ValueError(f"{what} token ids must be integers, got {bad[0]!r}; to give words use "
                             "PromptPairs.from_strings(model, ..., answer=[' Mary'])")
        ids = torch.as_tensor([int(v) for v in values], dtype=torch.long)
    if ids.is_floating_point() or ids.dtype == torch.bool or ids.ndim != 1:
        raise ValueError(f"{what} token ids must be a 1-D sequence of integers, got {ids.dtype} of shape {tuple(ids.shape)}")
    return ids.long()


def _texts(prompts, what: str) -> list[str]:
    """``prompts`` as a list of strings, or a ValueError naming the first non-string."""
    if isinstance(prompts, str):
        raise ValueError(f"{what} must be a list of prompts, one per pair, got the single string {prompts!r}; "
                         f"wrap it in a list: {what}=[{prompts!r}]")
    if not hasattr(prompts, "__len__"):
        raise ValueError(f"{what} must be a list of prompt strings, got {type(prompts).__name__}")
    for i, text in enumerate(prompts):
        if not isinstance(text, str):
            raise ValueError(f"pair {i}: the {what} prompt must be a string, got {type(text).__name__} {text!r}")
    return list(prompts)


def _answers(answers, what: str) -> list:
    """``answers`` as a list (one string or token id per pair), refusing a bare string or number."""
    if isinstance(answers, (str, int)):
        raise ValueError(f"{what} must be a list with one entry per pair, got the single value {answers!r}; "
                         f"wrap it in a list: {what}=[{answers!r}]")
    if not hasattr(answers, "__len__"):
        raise ValueError(f"{what} must be a list of one-token strings or token ids, got {type(answers).__name__}")
    for i, a in enumerate(answers):
        if not (a is None and what == "distractor") and not isinstance(a, (str, int)):
            raise ValueError(f"pair {i}: {what} must be a string (e.g. ' Mary') or a token id, got {type(a).__name__} {a!r}")
    return list(answers)


def single_token(tok, answer, i: int, what: str) -> int:
    if isinstance(answer, int):
        return answer
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [tok.decode([t]) for t in ids]
        raise ValueError(
            f"pair {i}: {what} {answer!r} is {len(ids)} tokens {pieces}, but answers must be a single token; "
            "use a word that is one token (often with a leading space, e.g. ' Mary'), or pass a token id"
        )
    return ids[0]


def _from_file(reader):
    def load(cls, path, model, skip_bad: bool = False, bos: bool = True) -> PromptPairs:
        tok = tokenizer(model)
        pairs = cls.from_ids(*reader(path, tok, skip_bad=skip_bad, bos=bos))
        warn_first_position(pairs, tok, bos)
        return pairs

    load.__doc__ = (f"Read pairs from a {reader.__name__[5:].upper()} file with columns clean, noise, answer"
                    "[, distractor][, metric] (see docs/tasks.md); ``skip_bad=True`` skips malformed rows with a "
                    "warning; ``bos`` as in :meth:`PromptPairs.from_strings` (the model's BOS token in front by default).")
    return classmethod(load)


PromptPairs.from_jsonl = _from_file(pairsfile.read_jsonl)
PromptPairs.from_csv = _from_file(pairsfile.read_csv)


def check_pairs(pairs) -> None:
    """A TypeError saying how to build prompt pairs, for anything that is not :class:`PromptPairs`."""
    if isinstance(pairs, PromptPairs):
        return
    raise TypeError(
        f"pairs must be atpstar.PromptPairs, got {type(pairs).__name__} {_short(pairs)}: build them with "
        "atpstar.tasks.ioi(model, n=8) (or city, rand), atpstar.PromptPairs.from_strings(model, clean=[...], "
        "noise=[...], answer=[...]) or atpstar.PromptPairs.from_jsonl('pairs.jsonl', model)")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
