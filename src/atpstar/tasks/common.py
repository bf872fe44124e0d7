"""Helpers shared by the task builders: data files, tokenization, warnings, ``only_correct``."""

from __future__ import annotations

import json
import random
import warnings
from importlib import resources

import torch

from ..substrate.capture import run
from ..metrics import resolve
from ..pairs import PromptPairs
from ..sink import warn_first_position
from ..tokens import encode, tokenizer, with_bos, word_ids  # noqa: F401  (the builders import them from here)

BATCH = 32


def rng(seed: int) -> random.Random:
    """A private, seeded RNG: builders never touch the global random state."""
    return random.Random(seed)


def load_data(name: str):
    """A bundled data file from ``atpstar/tasks/data``: parsed JSON, or a list of non-empty lines."""
    text = resources.files(__package__).joinpath("data", name).read_text(encoding="utf-8")
    if name.endswith(".json"):
        return json.loads(text)
    return [line.strip() for line in text.splitlines() if line.strip()]


def single_token_words(tok, words, prefix: str = " ") -> dict[str, int]:
    """The words that are exactly one token when preceded by ``prefix``, mapped to that token."""
    ids = {w: word_ids(tok, prefix + w) for w in words}
    return {w: i[0] for w, i in ids.items() if len(i) == 1}


def finish(model, task: str, rows: list, n: int, why: str, metric, only_correct: bool, bos: bool) -> PromptPairs:
    """Turn ``rows`` of ``(clean_ids, noise_ids, answer, distractor, texts)`` into pairs.

    Warns when fewer than ``n`` pairs were made (``why`` says what limited it) and when clean and noise
    differ at their first token (``bos`` says whether a BOS token was asked for), raises when none
    were made, and applies the ``only_correct`` filter.
    """
    if not rows:
        raise ValueError(f"{task}: could not make any prompt pair ({why})")
    if len(rows) < n:
        warnings.warn(f"{task}: made {len(rows)} of the {n} pairs asked for ({why})", stacklevel=3)
    clean, noise, answer, distractor, texts = zip(*rows)
    pairs = PromptPairs.from_ids(clean, noise, answer, distractor, metric=metric, texts=texts)
    warn_first_position(pairs, tokenizer(model), bos, stacklevel=4)
    return keep_correct(model, pairs, task) if only_correct else pairs


def evaluate(model, pairs: PromptPairs, metric=None) -> dict[str, torch.Tensor]:
    """Per pair: the clean and noise metric, and whether the clean prompt "does the task".

    Doing the task means logit_diff > 0 for the logit-diff metric; for any other metric, that the
    answer is the model's top-1 next token on the clean prompt.
    """
    metric = resolve(metric, pairs)
    out = {k: torch.empty(len(pairs)) for k in ("clean", "noise")}
    top1 = torch.zeros(len(pairs), dtype=torch.bool)
    with torch.no_grad():
        for group in pairs.groups():
            for chunk in torch.arange(len(group.index)).split(BATCH):
                rows, sub = group.index[chunk], group.pairs.select(chunk)
                clean_logits = run(model, group.clean[chunk])
                out["clean"][rows] = metric(clean_logits, sub).float().cpu()
                out["noise"][rows] = metric(run(model, group.noise[chunk]), sub).float().cpu()
                top1[rows] = (clean_logits.argmax(-1).cpu() == sub.answer)
    out["correct"] = out["clean"] > 0 if metric.name == "logit_diff" else top1
    return out


def keep_correct(model, pairs: PromptPairs, task: str) -> PromptPairs:
    """The pairs whose clean prompt the model gets right (see :func:`evaluate`); warns on drops."""
    correct = evaluate(model, pairs)["correct"]
    kept = correct.nonzero().flatten()
    dropped = len(pairs) - len(kept)
    if len(kept) == 0:
        raise ValueError(f"{task}: only_correct=True dropped all {len(pairs)} pairs: the model "
                         "does not favour the answer on any clean prompt")
    if dropped:
        warnings.warn(f"{task}: only_correct=True dropped {dropped} of {len(pairs)} pairs where the "
                      "model's clean prompt does not favour the answer", stacklevel=4)
    return pairs.select(kept)
