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

__all__ = ["TASKS", "city", "from_csv", "from_jsonl", "ioi", "rand"]
