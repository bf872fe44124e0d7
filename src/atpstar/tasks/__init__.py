"""Prompt-pair distributions and loaders for your own pairs.

``ioi``, ``city`` and ``rand`` build :class:`~atpstar.pairs.PromptPairs` from bundled data, for any
tokenizer; ``from_jsonl`` / ``from_csv`` load user pairs with row-level validation. See docs/tasks.md.
"""

from ..pairs import PromptPairs
from .city import city
from .ioi import ioi
from .rand import rand

from_jsonl = PromptPairs.from_jsonl
from_csv = PromptPairs.from_csv

TASKS = {"ioi": ioi, "city": city, "rand": rand}


def load(task: str, model, n: int | None = None, seed: int = 0, bos: bool = True, default_n: int = 8) -> PromptPairs:
    """The pairs of ``task``: a built-in task's name (``n`` pairs, default ``default_n``, drawn with ``seed``)
    or a path to your JSONL / CSV pairs file (its first ``n`` pairs, default all)."""
    if task in TASKS:
        return TASKS[task](model, n=n or default_n, seed=seed, bos=bos)
    loader = from_csv if task.lower().endswith(".csv") else from_jsonl
    pairs = loader(task, model, bos=bos)
    return pairs if n is None or n >= len(pairs) else pairs.select(range(n))


__all__ = ["TASKS", "city", "from_csv", "from_jsonl", "ioi", "load", "rand"]
