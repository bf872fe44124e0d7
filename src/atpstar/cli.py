"""Command line: ``atpstar demo`` and ``atpstar run``."""

from __future__ import annotations

import argparse
import logging
import sys
import time


def _ioi_demo_pairs(model):
    from .pairs import PromptPairs

    return PromptPairs.from_strings(
        model,
        clean=["When Mary and John went to the store, John gave a drink to"],
        noise=["When Alice and Bob went to the store, Bob gave a drink to"],
        answer=[" Mary"],
        distractor=[" John"],
    )


def cmd_demo(args) -> int:
    from . import load_model
    from .methods import acp

    t0 = time.time()
    model = load_model(args.model)
    print(f"model: {model.describe()} (loaded in {time.time() - t0:.1f}s)")
    pairs = _ioi_demo_pairs(model)
    print(f"task: IOI, clean {pairs.texts[0][0]!r} -> ' Mary' vs ' John'; noise {pairs.texts[0][1]!r}")
    t0 = time.time()
    scores = acp(model, pairs, kinds=args.kinds, progress=not args.quiet)
    print(f"exact activation patching of {scores.info['patches'] + scores.info['skipped_identical']} "
          f"{args.kinds} nodes in {time.time() - t0:.0f}s")
    print(scores.top(args.top).drop(columns=["kind", "layer", "unit", "pos"]).to_string(index=False))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="atpstar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="localise IOI on the bundled SmolLM2-135M with exact patching")
    demo.add_argument("--model", default="default", help="model: 'default', a hub id, a directory or a .gguf file")
    demo.add_argument("--kinds", default="head", help="node kinds: q,k,v,head,neuron, 'attn' or 'all'")
    demo.add_argument("--top", type=int, default=15)
    demo.add_argument("--quiet", action="store_true")
    demo.set_defaults(func=cmd_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
