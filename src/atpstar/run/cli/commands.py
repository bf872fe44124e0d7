"""What each subcommand does: build a :class:`~atpstar.run.pipeline.RunConfig` from the arguments, call the
pipeline, print a short summary (stdout); stage messages go to stderr."""

from __future__ import annotations

import sys
from pathlib import Path

from ..options import parse_methods


def echo_to_stderr(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(f"[atpstar] {msg}", file=sys.stderr, flush=True))


def config_from_args(args, task: str):
    from ..pipeline import RunConfig

    return RunConfig(model=args.model, task=task, pairs=args.pairs, bos=args.bos, methods=parse_methods(args.method),
                     kinds=args.kinds, level=getattr(args, "level", "nodes"), verify_budget=args.verify_budget, stop=args.stop, diagnose=args.diagnose,
                     edge_universe=getattr(args, "edge_universe", None),
                     faithfulness=getattr(args, "faithfulness", False),
                     samples=args.samples, p=args.p, delta=args.delta, device=args.device, dtype=args.dtype,
                     seed=args.seed, batch_size=args.batch_size, checkpoint_every=args.checkpoint_every)


def cmd_run(args, task: str | None = None) -> int:
    from ..pipeline import run

    config = config_from_args(args, task or args.task).validate()
    folder = run(config, args.out, progress=not args.quiet, force=args.force, echo=echo_to_stderr(args.quiet))
    print_summary(folder, args.top)
    return 0


def cmd_demo(args) -> int:
    if args.out is None:
        args.out = str(free_name(Path("atpstar-demo")))
    if not args.diagnose and str(args.stop).startswith("theta"):
        args.stop = None  # --no-diagnose: no bound at all, the top 50 verified
    return cmd_run(args, task="ioi")


def free_name(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... the first that does not exist (the demo never overwrites)."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def cmd_resume(args) -> int:
    from ..pipeline import resume
    from ..folder import RunDir

    meta = RunDir(args.dir).read_meta()
    if meta.get("status") == "done":
        page = Path(args.dir) / "report.html"
        if not page.is_file():  # interrupted while the report was written (the run itself had finished)
            from ..report import write_report

            page = write_report(args.dir)
            print(f"{args.dir}: the run had finished; its report was missing and is rebuilt: {page}")
            return 0
        print(f"{args.dir}: the run is already finished; nothing to resume (report: {page})")
        return 0
    folder = resume(args.dir, progress=not args.quiet, echo=echo_to_stderr(args.quiet), batch_size=args.batch_size)
    print_summary(folder, 15)
    return 0


def cmd_report(args) -> int:
    from ..report import write_report

    print(f"report: {write_report(args.dir)}")
    return 0


def cmd_export(args) -> int:
    from ...edges.export import eap_graph_of, write_json
    from ...edges.mib import write_mib_folder
    from ..folder import load_run

    folder = load_run(args.dir)
    if folder.edge_scores is None:
        raise ValueError(f"{args.dir} has no edge scores: make the run with --level edges (or both)")
    verified = folder.verified_edges
    which, circuit = _export_circuit(args, verified)
    d_model = folder.meta["stages"].get("edges", {}).get("d_model", 0)
    score = args.score
    if args.mib is not None:
        config = folder.meta.get("config", {})
        path = write_mib_folder(folder.edge_scores, d_model, args.mib, config.get("task", "task"),
                                config.get("model", "model"), verified=verified, score=score, circuit=circuit)
        print(f"MIB submission folder: {path.parent} (importance scores of every edge, exact where verified)")
        return 0
    graph = eap_graph_of(folder.edge_scores, d_model, circuit, verified=verified, score=score)
    path = write_json(graph, args.out or Path(args.dir) / "eap-graph.json")
    n = sum(e["in_graph"] for e in graph["edges"].values())
    print(f"EAP-IG graph: {path} ({n:,} of {len(graph['edges']):,} edges in the graph: {which})")
    return 0


def _export_circuit(args, verified) -> tuple[str, object]:
    """(--circuit's choice, the circuit for eap_graph_of) from the options and the run's verified edges."""
    which = args.circuit or ("verified" if verified is not None and len(verified) else "top:100")
    if which == "verified":
        if verified is None or not len(verified):
            raise ValueError(f"{args.dir} verified no edges: use --circuit top:N")
        return which, verified["name"].tolist()
    if which == "all":
        return which, None
    if which.startswith("top:") and which[4:].isdigit() and int(which[4:]) > 0:
        return which, int(which[4:])
    raise ValueError(f"--circuit {which!r}: use verified, top:N (N > 0) or all")


def cmd_evaluate(args) -> int:
    import json

    from ... import load_model, tasks
    from ...circuits.evaluate_file import evaluate_file, format_evaluation
    from ..options import resolve_device, torch_dtype

    model = load_model(args.model, dtype=torch_dtype(args.dtype), device=resolve_device(args.device))
    pairs = tasks.load(args.task, model, n=args.pairs, seed=args.seed, bos=args.bos)
    out = evaluate_file(model, pairs, args.circuit, curve=args.curve, batch_size=args.batch_size)
    print(format_evaluation(out))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


def cmd_tasks(args) -> int:
    from ... import load_model, tasks
    from ...metrics import resolve

    model = load_model(args.model)
    print(f"built-in tasks (examples tokenized for {model.name}); use one with `atpstar run --task NAME`:\n")
    for name, builder in tasks.TASKS.items():
        pairs = builder(model, n=1, seed=0)
        clean, noise = pairs.texts[0]
        tok = model.tokenizer
        answer = tok.decode([int(pairs.answer[0])])
        distractor = tok.decode([int(pairs.distractor[0])]) if int(pairs.distractor[0]) >= 0 else None
        summary = (sys.modules[builder.__module__].__doc__ or name).strip().splitlines()[0]
        print(f"{name}: {summary}")
        print(f"  clean:  {clean!r}\n  noise:  {noise!r}")
        print(f"  answer: {answer!r}" + (f"   distractor: {distractor!r}" if distractor is not None else ""))
        print(f"  metric: {resolve(None, pairs).name}\n")
    print("your own pairs: a .jsonl or .csv file with columns clean, noise, answer[, distractor][, metric]\n"
          "(see docs/tasks.md), e.g. `atpstar run --task my_pairs.jsonl --out runs/mine`")
    return 0


def _print_diagnostic(what: str, facts: dict) -> None:
    """A diagnostic's statement, the design it ran with (and why), and its warning when θ rules out nothing verified."""
    print(f"{what}: {facts['statement']}")
    design = facts.get("design") or {}
    if design.get("explanation"):
        print(f"{what} design: {design['why']}: {design['explanation']}")
    if facts.get("warning"):
        print(f"{what} warning: {facts['warning']}")


def print_summary(folder, top: int) -> None:
    """The top of the ranking with verified effects, the verification and diagnostic outcome, where things are."""
    meta, nodes, edges = folder.meta, folder.nodes, folder.edges
    methods = meta["config"]["methods"]
    from ..folder import method_slug

    slug = method_slug(methods[0])
    fmt = lambda x: f"{x:.4g}"  # noqa: E731
    if nodes is not None:
        shown = nodes.head(top)[["rank", "name", "token", f"score_{slug}", f"effect_{slug}", "effect_exact"]]
        print(f"top {len(shown)} of {len(nodes):,} nodes ranked by {methods[0]} "
              "(effect_exact: verified by exact patching):")
        print(shown.to_string(index=False, float_format=fmt, na_rep="-"))
    if edges is not None:
        shown = edges.head(top)[["rank", "name", "token", "score", "effect", "effect_exact"]]
        print(f"top {len(shown)} of {len(edges):,} edges ranked by {methods[0]} "
              "(effect_exact: verified by exact edge patching):")
        print(shown.to_string(index=False, float_format=fmt, na_rep="-"))
    stages = meta["stages"]
    if "verify" in stages:
        v = stages["verify"]
        print(f"verified {v['nodes']:,} nodes ({v['per_pair']:.1f} forward-pass equivalents per pair, "
              f"{v['seconds']:.1f}s); stopped: {v['stopped']}")
    if "verify:edges" in stages:
        v = stages["verify:edges"]
        print(f"verified {v['edges']:,} edges ({v['per_pair']:.1f} forward-pass equivalents per pair, "
              f"{v['seconds']:.1f}s); stopped: {v['stopped']}")
    for stage, what in (("diagnose", "diagnostic"), ("diagnose:edges", "edge diagnostic")):
        if stage in stages:
            _print_diagnostic(what, stages[stage])
    faith = stages.get("faithfulness", {})
    if "cpr" in faith:
        print(f"faithfulness of the {faith['method']} edge ranking's circuits: CPR {faith['cpr']:.4f}, "
              f"CMD {faith['cmd']:.4f} (faithfulness.csv; the smallest 80 % / 90 % circuits in the report)")
    total = meta.get("costs", {}).get("total", {})
    if total:
        print(f"total cost: {total['per_pair']:.1f} forward-pass equivalents per pair, {total['seconds']:.1f}s")
    tables = [n for n, t in (("nodes", nodes), ("edges", edges)) if t is not None]
    print(f"run folder: {folder.path} ({', '.join(f'{n}.parquet, {n}.csv' for n in tables)}, run.json)")
    print(f"report: {folder.path / 'report.html'}")
