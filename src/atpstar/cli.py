"""Command line: ``atpstar demo`` (AtP* on IOI with the bundled model) and ``atpstar run``."""

from __future__ import annotations

import argparse
import sys
import time


def estimate_and_verify(model, pairs, kinds: str, top: int, progress: bool):
    """AtP* over every node of ``kinds``, then exact activation patching of its top nodes."""
    from .methods import acp, atp

    t0 = time.time()
    est = atp(model, pairs, kinds=kinds, progress=progress)
    t_est = time.time() - t0
    frame = est.to_frame().head(top)
    t0 = time.time()
    exact = acp(model, pairs, nodes=frame, progress=progress).to_frame()[["name", "effect"]]
    t_ver = time.time() - t0
    table = frame.merge(exact, on="name", suffixes=("_atp*", "_exact"))
    n_nodes = sum(int(s.isfinite().sum()) for s in est.score.values())
    print(f"AtP* scored {n_nodes:,} {kinds} nodes on {len(pairs)} pairs in {t_est:.1f}s; "
          f"verified the top {len(frame)} exactly in {t_ver:.1f}s")
    return table


def cmd_demo(args) -> int:
    from . import load_model, tasks

    t0 = time.time()
    model = load_model(args.model)
    print(f"model: {model.describe()} (loaded in {time.time() - t0:.1f}s)")
    pairs = tasks.ioi(model, n=args.pairs, seed=args.seed)
    clean, noise = pairs.texts[0]
    print(f"task: IOI, {len(pairs)} pairs, e.g. clean {clean!r} / noise {noise!r}; metric logit(IO) - logit(S)")
    table = estimate_and_verify(model, pairs, args.kinds, args.top, progress=not args.quiet)
    print(table[["name", "score", "effect_atp*", "effect_exact"]].to_string(index=False, float_format="%.3f"))
    print("score: AtP* ranking score; effect_atp*: estimated mean effect; effect_exact: activation patching")
    return 0


def cmd_run(args) -> int:
    from . import load_model, tasks
    from .methods import METHODS

    model = load_model(args.model)
    if args.task in tasks.TASKS:
        pairs = tasks.TASKS[args.task](model, n=args.pairs, seed=args.seed)
    elif args.task.endswith(".csv"):
        pairs = tasks.from_csv(args.task, model)
    else:
        pairs = tasks.from_jsonl(args.task, model)
    options = {}
    if args.method in ("atp", "atp*"):
        options = {"qk_fix": args.method == "atp*" or args.qk_fix, "graddrop": args.method == "atp*" or args.graddrop}
    scores = METHODS["atp" if args.method == "atp*" else args.method](model, pairs, kinds=args.kinds,
                                                                      progress=not args.quiet, **options)
    frame = scores.to_frame()
    if args.out:
        frame.to_csv(args.out, index=False)
        print(f"wrote {len(frame):,} nodes to {args.out}")
    print(frame.head(args.top).to_string(index=False, float_format="%.4f"))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="atpstar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="default", help="'default' (bundled SmolLM2-135M), a hub id, a directory or a .gguf file")
    common.add_argument("--kinds", default="all", help="node kinds: q,k,v,head,neuron, 'attn' or 'all'")
    common.add_argument("--pairs", type=int, default=4, help="number of prompt pairs to build")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--top", type=int, default=20)
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    demo = sub.add_parser("demo", parents=[common], help="AtP* on IOI with the bundled model, top nodes verified exactly")
    demo.set_defaults(func=cmd_demo)
    run = sub.add_parser("run", parents=[common], help="run one method on a task or your own JSONL/CSV pairs")
    run.add_argument("--task", default="ioi", help="ioi, city, rand, or a path to a .jsonl / .csv file")
    run.add_argument("--method", default="atp*", choices=["atp*", "atp", "acp"])
    run.add_argument("--qk-fix", action="store_true", help="with --method atp: add the QK fix")
    run.add_argument("--graddrop", action="store_true", help="with --method atp: add GradDrop")
    run.add_argument("--out", help="write the full node table to this CSV file")
    run.set_defaults(func=cmd_run)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, IndexError, FileNotFoundError, ModuleNotFoundError) as err:
        print(f"atpstar: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
