"""The command line of a benchmark that caches one JSON result: measure (or, with ``--cached``, reread)
and print its table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def smollm_ioi(n_pairs: int):
    """(model, pairs, edge graph): SmolLM2 on one thread, ``n_pairs`` IOI pairs (seed 0), the setting these
    benchmarks measure."""
    import torch

    import atpstar
    from atpstar.edges import EdgeGraph

    torch.set_num_threads(1)
    model = atpstar.load_model("default")
    return model, atpstar.tasks.ioi(model, n=n_pairs, seed=0), EdgeGraph.of(model)


def cached_main(doc: str, cache: Path, measure, table, activations_help: str) -> None:
    """``--pairs N`` (default 8), ``--activations`` (also EAP-IG-activations), ``--cached`` (print the
    cached result): ``measure(pairs, activations)`` → dict, written to ``cache``; ``table(dict)`` → text."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--activations", action="store_true", help=activations_help)
    parser.add_argument("--cached", action="store_true", help="print the cached results")
    args = parser.parse_args()
    if args.cached:
        result = json.loads(cache.read_text())
    else:
        result = measure(args.pairs, args.activations)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=1))
    print(table(result))
