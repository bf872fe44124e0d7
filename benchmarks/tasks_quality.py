"""How well the model does each builtin task: the table in docs/tasks.md.

Usage: PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.tasks_quality [model] [n] [seed]
"""

from __future__ import annotations

import sys

import atpstar
from atpstar import tasks
from atpstar.tasks.common import evaluate

SETTINGS = [("ioi", {}), ("city", {}), ("city", {"metric": "logit_diff"}), ("rand", {})]


def main(spec: str = "default", n: int = 64, seed: int = 0) -> None:
    model = atpstar.load_model(spec)
    print(f"{model.name}, {n} pairs per task, seed {seed}\n")
    print("| task | metric | pairs | model does the task | mean clean metric | mean noise metric |")
    print("|---|---|---|---|---|---|")
    for name, kwargs in SETTINGS:
        pairs = tasks.TASKS[name](model, n=n, seed=seed, **kwargs)
        result = evaluate(model, pairs)
        metric = getattr(pairs.metric, "name", pairs.metric)
        print(f"| {name} | {metric} | {len(pairs)} | {result['correct'].float().mean():.0%} "
              f"| {result['clean'].mean():.2f} | {result['noise'].mean():.2f} |")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(*(args[:1] or ["default"]), *[int(a) for a in args[1:3]])
