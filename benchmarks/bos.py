"""The first token: AtP* against exact patching with and without the beginning-of-sequence (BOS) token.

For each model (SmolLM2-135M-Instruct, Gemma 3 270M) and task (user-style pronoun pairs whose clean and
noise prompts differ in their first word; the built-in IOI and RAND), pairs are built with ``bos=True``
(the default) and ``bos=False``; AtP* ranks every attention node, the top ``--verify`` nodes are patched
exactly, and the table reports: the correlation of AtP*'s estimates with the exact effects over that
verified top, the median |estimate| / |exact| over its top 10, how many of its top 10 are at the first
two positions of the text (position 0 without BOS, 0-1 with it), and, where every node was patched
exactly (``--full``, the pronoun pairs by default), the recall of the true top 10 in AtP*'s top 10.

Writes benchmarks/results/bos.csv (one row per model, task and setting; settings already there are kept,
``--recompute`` redoes them) and prints the markdown table of docs/bos.md. Attention nodes only, 4 pairs,
OMP_NUM_THREADS=1: about 6-9 minutes per pronoun setting (every attention node patched) and 1-2 minutes
per other setting on a shared 2-core CPU, about 45 minutes for both models.

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.bos [--models default,gemma3-270m]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import atpstar
from atpstar import tasks
from atpstar.sink import first_position_differs, starts_with_bos
from benchmarks.studylib import models

CSV = Path("benchmarks/results/bos.csv")
PRONOUNS = [  # (clean, noise): the clean name is a woman's (answer " she"), the noise name a man's (" he")
    ("Anna went home early because", "James went home early because"),
    ("Maria called the doctor because", "David called the doctor because"),
    ("Sarah missed the bus because", "Peter missed the bus because"),
    ("Emma left the party because", "Jacob left the party because"),
    ("Laura stayed at work because", "Simon stayed at work because"),
    ("Julia sold the car because", "Kevin sold the car because"),
]


def pronoun_pairs(model, n: int, bos: bool):
    """The first ``n`` pronoun pairs whose clean and noise prompts have equal token lengths."""
    keep = []
    for clean, noise in PRONOUNS:
        try:
            atpstar.PromptPairs.from_strings(model, [clean], [noise], [" she"], [" he"], bos=bos)
            keep.append((clean, noise))
        except ValueError:  # unequal token lengths in this tokenizer
            continue
    clean, noise = zip(*keep[:n])
    return atpstar.PromptPairs.from_strings(model, list(clean), list(noise), [" she"] * len(clean),
                                            [" he"] * len(clean), bos=bos)


def build(model, task: str, n: int, bos: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the first-token warning is the subject here
        if task == "pronouns":
            return pronoun_pairs(model, n, bos)
        return tasks.TASKS[task](model, n=n, seed=0, bos=bos)


def measure(model, pairs, verify: int, full: bool) -> dict:
    """AtP* against exact patching on its verified top (and on every node with ``full``)."""
    t0 = time.perf_counter()
    est = atpstar.atp(model, pairs, kinds="attn", progress=False).to_frame()
    seconds_atp = time.perf_counter() - t0
    top = est.head(verify)
    t0 = time.perf_counter()
    truth = atpstar.acp(model, pairs, kinds="attn" if full else None, nodes=None if full else top,
                        progress=False).to_frame().set_index("name")
    seconds_exact = time.perf_counter() - t0
    exact = truth.loc[top["name"], "effect"].to_numpy()
    estimate = top["effect"].to_numpy()
    ratio = np.abs(estimate[:10]) / np.maximum(np.abs(exact[:10]), 1e-9)
    first_text = int(starts_with_bos(model, pairs))  # the text's first position
    row = {"pairs": len(pairs), "tokens": pairs.max_len, "differ_at_0": len(first_position_differs(pairs)),
           "verified": len(top), "corr": float(np.corrcoef(estimate, exact)[0, 1]),
           "median_ratio_top10": float(np.median(ratio)),
           "top10_at_first_text_positions": int((top["pos"].head(10) <= first_text + 1).sum()),
           "recall_top10": np.nan, "seconds_atp": seconds_atp, "seconds_exact": seconds_exact,
           "top5": "; ".join(f"{n}: {e:+.3f} vs {x:+.3f}" for n, e, x in zip(top["name"][:5], estimate[:5], exact[:5]))}
    if full:
        true_top = set(truth["score"].sort_values(ascending=False).index[:10])
        row["recall_top10"] = len(true_top & set(top["name"].head(10))) / 10
    return row


def markdown(df: pd.DataFrame) -> str:
    lines = ["| model | task | BOS | pairs differing at position 0 | corr. AtP* vs exact (verified top) | "
             "median est./exact (top 10) | top-10 nodes at the text's first 2 positions | recall of true top 10 |",
             "|---|---|---|---|---|---|---|---|"]
    for r in df.itertuples():
        recall = "—" if pd.isna(r.recall_top10) else f"{r.recall_top10:.0%}"
        lines.append(f"| {r.model} | {r.task} | {'yes' if r.bos else 'no'} | {r.differ_at_0} of {r.pairs} | "
                     f"{r.corr:.2f} (top {r.verified}) | {r.median_ratio_top10:.2f} | {r.top10_at_first_text_positions} "
                     f"| {recall} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="default,gemma3-270m")
    parser.add_argument("--tasks", default="pronouns,ioi,rand")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--verify", type=int, default=100, help="AtP*'s top nodes patched exactly")
    parser.add_argument("--full", default="pronouns", help="tasks whose every attention node is patched exactly")
    parser.add_argument("--out", default=str(CSV))
    parser.add_argument("--recompute", action="store_true", help="redo the settings already in --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = [] if args.recompute or not out.exists() else pd.read_csv(out).to_dict("records")
    done = {(r["model"], r["task"], bool(r["bos"])) for r in rows}
    for spec in args.models.split(","):
        todo = [(t, b) for t in args.tasks.split(",") for b in (True, False) if (models.tag_of(spec), t, b) not in done]
        model = models.load(spec) if todo else None
        for task, bos in todo:
            pairs = build(model, task, args.pairs, bos)
            row = measure(model, pairs, args.verify, task in args.full.split(","))
            rows.append({"model": models.tag_of(spec), "task": task, "bos": bos, **row})
            print(rows[-1], flush=True)
            pd.DataFrame(rows).to_csv(out, index=False)
    print(markdown(pd.DataFrame(rows)))


if __name__ == "__main__":
    main()
