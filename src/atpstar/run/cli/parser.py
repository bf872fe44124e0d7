"""The command line's arguments: one parser per subcommand, each with examples in its --help."""

from __future__ import annotations

import argparse

from ..options import DEVICES, DTYPES, EDGE_UNIVERSE_HELP, LEVELS
from ..registry import RUN_METHODS

DESCRIPTION = """\
atpstar: find the attention heads, queries/keys/values and MLP neurons that cause a language-model
behaviour (AtP*), verify the top of the ranking by exact activation patching, bound what was
missed, and write everything to a run folder with an HTML report."""

EXAMPLES = {
    "main": """\
examples:
  atpstar demo                                   # AtP* on IOI with the bundled model, report included
  atpstar tasks                                  # the built-in tasks, one example pair each
  atpstar run --task ioi --pairs 8 --kinds attn --stop small-effects --diagnose --out runs/ioi
  atpstar resume runs/ioi                        # after Ctrl-C or a crash
  atpstar report runs/ioi                        # rebuild runs/ioi/report.html""",
    "run": """\
examples:
  atpstar run --task ioi --pairs 16 --kinds head --out runs/ioi-heads
  atpstar run --task city --method atp*,atp --kinds attn --verify-budget 50nodes --out runs/city
  atpstar run --task my_pairs.jsonl --stop small-effects:window=30,relative=0.02 --diagnose --out runs/mine-stop
  atpstar run --task ioi --kinds attn --stop theta:relative=0.1 --verify-budget 300nodes --out runs/ioi-theta
  atpstar run --model EleutherAI/pythia-70m --task ioi --method atp*,acp --kinds head --out runs/pythia
  atpstar run --task rand --device auto --dtype bfloat16 --seed 3 --quiet --out runs/rand
  atpstar run --task ioi --pairs 4 --level edges --verify-budget 100edges --out runs/ioi-edges100
  atpstar run --task ioi --pairs 4 --level edges --verify-budget 20edges --faithfulness --out runs/ioi-faith

the run folder DIR holds run.json, nodes.parquet, nodes.csv (edges.parquet, edges.csv with --level edges
or both; faithfulness.csv with --faithfulness), report.html, stages/ and checkpoints/;
an existing DIR is never overwritten (continue it with `atpstar resume DIR`, or pass --force).""",
    "demo": """\
examples:
  atpstar demo                          # writes ./atpstar-demo (or atpstar-demo-2, ...) and prints the report's path
  atpstar demo --pairs 2 --kinds attn --out runs/demo --quiet""",
    "report": """\
examples:
  atpstar report runs/ioi               # writes runs/ioi/report.html from the folder's files (no model needed)""",
    "resume": """\
examples:
  atpstar resume runs/ioi               # continues where the run stopped; finished stages are not redone
  atpstar resume runs/ioi --batch-size 1 --quiet     # e.g. after running out of memory""",
    "export": """\
examples:
  atpstar export runs/ioi-edges                       # runs/ioi-edges/eap-graph.json: the verified edges in the graph
  atpstar export runs/ioi-edges --circuit top:200 --out circuits/ioi_smollm2/graph.json
  atpstar export runs/ioi-edges --mib submission      # submission/ioi_smollm2-135m-instruct/importances.json

writes EAP-IG's Graph.to_json format (nodes input, a{L}.h{H}, m{L}, logits; edges summed over positions,
'in_graph' = the circuit), which EAP-IG's Graph.from_json and the MIB circuit track read. 'score' is MIB's
importance: -effect (patching a high-score edge hurts the behaviour most), the exact effect where the edge
was verified. A key/value head shared by several query heads (and Gemma 3's whole-layer attention write)
is split evenly over the EAP-IG edges it stands for.""",
    "evaluate": """\
examples:
  atpstar evaluate runs/ioi-edges/eap-graph.json --task ioi --pairs 8      # the in_graph circuit's faithfulness
  atpstar evaluate runs/ioi-edges/eap-graph.json --curve --json scores.json # + MIB's curves, CPR, CMD

faithfulness f = (m(circuit) - m(empty)) / (m(full) - m(empty)), the metric averaged over the pairs; in a circuit's
run every reader reads the clean run's value of the edges in the circuit and the noise prompt's of the others
(docs/circuits.md). --curve ranks the file's edge scores at MIB's grid (0.1%% ... 100%% of the edges, pruned),
CPR = area under f (signed scores), CMD = area under |1 - f| (absolute scores).""",
    "tasks": """\
examples:
  atpstar tasks                         # examples made with the bundled model's tokenizer
  atpstar tasks --model path/to/model_dir""",
}


DEMO = {"kinds": "attn", "verify_budget": "50nodes", "stop": "theta", "samples": 600}
"""The demo's defaults: every attention node of SmolLM2 (~11k that can move for an IOI prompt), verified in
AtP* order until the diagnostic's θ is below 10% of the largest verified effect or 50 nodes are verified; the
diagnostic patches 600 random subsets (p chosen by the planner: 0.1 for ~11k nodes), twice the planner's default
budget, because at 300 the planner predicts (and the run measured) a θ above the largest verified effect: a
true bound that rules out nothing found. Patched once after the first chunk and re-bounded as nodes are verified
(:data:`DEMO_TIME`)."""
DEMO_TIME = "about 138 s of compute on a 2-core CPU"
"""The demo's measured cost (benchmarks/results/demo.json, ``costs.total.seconds``; tests/test_doc_numbers.py
checks that they agree)."""


def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=30)


def _add_run_options(p: argparse.ArgumentParser, demo: bool) -> None:
    what = p.add_argument_group("what to run")
    what.add_argument("--model", default="default", metavar="M",
                      help="'default' (bundled SmolLM2-135M-Instruct), a hub id, a model directory or a .gguf file")
    if not demo:
        what.add_argument("--task", default="ioi", metavar="T",
                          help="ioi, city, rand (see `atpstar tasks`), or your pairs file (.jsonl or .csv)")
    what.add_argument("--pairs", type=int, default=4 if demo else None, metavar="N",
                      help="prompt pairs to build (built-in tasks, default %s) or to keep from a file (default: all)"
                      % (4 if demo else 8))
    what.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True,
                      help="put the model's beginning-of-sequence token in front of every prompt (position 0; "
                           "the default, as TransformerLens does); --no-bos: prompts start with their first word "
                           "(a warning if clean and noise differ there: estimates at the first positions are "
                           "then unreliable)")
    methods = "; ".join(f"{k}: {m.help}" for k, m in RUN_METHODS.items())
    what.add_argument("--method", default="atp*", metavar="M[,M...]",
                      help=f"one or more methods, comma-separated; the first one's ranking is verified. {methods}")
    what.add_argument("--kinds", default=DEMO["kinds"] if demo else "all", metavar="K",
                      help="node kinds: q,k,v,head,neuron (comma-separated), 'attn' or 'all' (default %s)"
                      % (DEMO["kinds"] if demo else "all"))
    what.add_argument("--level", default="nodes", choices=LEVELS,
                      help="rank nodes (default), edges (writer -> reader at one position: a head's or MLP's write "
                           "read by a later query, key, value, MLP or the logits), or both; edges are "
                           "ranked by the AtP variants and subsampling, blocks, hierarchical; the first method's "
                           "edge ranking is verified by exact edge patching and drawn as a circuit in the report")
    if not demo:
        what.add_argument("--faithfulness", action="store_true",
                          help="with --level edges or both: score the first method's edge ranking (exact effects "
                               "where edges were verified) as circuits, as the MIB benchmark does: faithfulness f at "
                               "0.1%%...100%% of the edges, CPR, CMD and the smallest circuits with f >= 0.8 and 0.9, "
                               "into the run folder (faithfulness.csv) and the report")
    check = p.add_argument_group("verification and diagnostic")
    check.add_argument("--verify-budget", default=DEMO["verify_budget"] if demo else "100", metavar="B",
                       help="exact patching of the top of the ranking: forward-pass equivalents per pair (e.g. 100, "
                            "the clean and noise runs count 2), a node (or edge) count (50nodes, 50edges), seconds "
                            "(60s), or 0 for none "
                            "(default %s)" % (DEMO["verify_budget"] if demo else "100"))
    check.add_argument("--stop", default=DEMO["stop"] if demo else None, metavar="RULE",
                       help="stop verifying early: small-effects[:window=W,threshold=T,relative=R] stops once the "
                            "last W verified nodes all had |effect| < T or < R x the largest so far "
                            "(default W=20, R=0.01); theta[:target=T,relative=R] stops once the diagnostic's bound θ "
                            "on every unverified node is below T or R x the largest verified |effect| (default "
                            "R=0.1; its random subsets are patched once and re-bounded as nodes are verified, with "
                            "the same design as --diagnose (--samples, --p, --delta); it also gives the run its "
                            "diagnostic)"
                            + (" (default %s)" % DEMO["stop"] if demo else ""))
    if demo:
        check.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                           help="skip the diagnostic (the demo runs it by default)")
    else:
        check.add_argument("--diagnose", action="store_true",
                           help="bound the effects of the unverified nodes (and, with --level edges or both, "
                                "edges) by random joint patches")
    check.add_argument("--samples", type=int, default=DEMO["samples"] if demo else None, metavar="S",
                       help="diagnostic (--diagnose, --stop theta): random subsets to patch, each about one forward "
                            "pass per pair (default: %s; the run prints and records the design it chose and why)"
                            % ("%d, so that θ can rule out nodes as large as those verified" % DEMO["samples"] if demo
                               else "the planner's, 300, for the default budget of 302 forward-pass equivalents per "
                                    "pair"))
    check.add_argument("--p", type=float, default=None, metavar="P",
                       help="diagnostic: chance of each unverified node (edge) to be in a subset (default: the "
                            "planner chooses it for the number of unverified units: the p of smallest expected θ "
                            "with at most 1200 units per subset, e.g. 0.1 for ~10^4 nodes)")
    check.add_argument("--edge-universe", default=None, metavar="U",
                       help="the edges the edge diagnostic (--diagnose, --stop theta at --level edges/both) bounds: "
                            + EDGE_UNIVERSE_HELP + ". A model has ~10^6 edges, so a bound over all of them needs "
                            "many --samples to be useful")
    check.add_argument("--delta", type=float, default=0.05, metavar="D",
                       help="diagnostic: the bound may fail with probability D (default 0.05)")
    where = p.add_argument_group("output and machine")
    where.add_argument("--out", default=None, required=not demo, metavar="DIR",
                       help="the run folder to create" + (" (default: ./atpstar-demo, or -2, -3... if taken)" if demo else ""))
    where.add_argument("--force", action="store_true", help="delete an existing run folder DIR and start over")
    where.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default cpu; auto: a GPU if any)")
    where.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' precision (default float32)")
    where.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the task's pairs and random subsets")
    where.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="pairs per AtP pass / patches per forward pass (default: automatic); lower it if out of memory")
    where.add_argument("--checkpoint-every", type=float, default=30.0, metavar="SEC",
                       help="seconds between checkpoints of long stages (default 30)")
    where.add_argument("--top", type=int, default=15, metavar="N", help="nodes to print at the end (default 15)")
    where.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atpstar", description=DESCRIPTION, epilog=EXAMPLES["main"],
                                     formatter_class=_formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, epilog=EXAMPLES[name],
                              formatter_class=_formatter)

    run = add("run", "run the pipeline (estimate, verify, diagnose) into a run folder with a report")
    _add_run_options(run, demo=False)
    demo = add("demo", f"AtP* on IOI with the bundled model: verification, diagnostic and report ({DEMO_TIME})")
    _add_run_options(demo, demo=True)
    report = add("report", "rebuild DIR/report.html from a run folder")
    report.add_argument("dir", metavar="DIR", help="a run folder")
    resume = add("resume", "continue an interrupted run (Ctrl-C, crash): finished work is not redone")
    resume.add_argument("dir", metavar="DIR", help="the run folder to continue")
    resume.add_argument("--batch-size", type=int, default=None, metavar="N",
                        help="replace the run's batch size (memory only, results are the same), e.g. after running "
                             "out of memory")
    resume.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
    export = add("export", "write a run's edges as an EAP-IG / MIB circuit graph (JSON)")
    export.add_argument("dir", metavar="DIR", help="a run folder made with --level edges or both")
    export.add_argument("--out", default=None, metavar="FILE", help="the JSON file (default DIR/eap-graph.json)")
    export.add_argument("--circuit", default=None, metavar="WHICH",
                        help="which edges are in the graph: 'verified' (default when edges were verified), 'top:N' "
                             "(the N edges of largest |effect| summed over positions; default top:100 otherwise), "
                             "or 'all'")
    export.add_argument("--mib", default=None, metavar="OUT",
                        help="write MIB's circuit-track submission folder OUT/{task}_{model}/importances.json instead")
    export.add_argument("--score", default="effect", choices=("effect", "ranking"),
                        help="the score written, as MIB's importance (-value): 'effect' (default), the signed effect, "
                             "exact where verified; 'ranking', the method's ranking score (AtP*'s GradDrop) with the "
                             "effect's sign")
    evaluate = add("evaluate", "score a circuit (EAP-IG / MIB graph JSON) by its faithfulness on a model and task")
    evaluate.add_argument("circuit", metavar="CIRCUIT.json", help="an EAP-IG / MIB graph JSON (Graph.to_json)")
    evaluate.add_argument("--model", default="default", metavar="M", help="the model the circuit is of (as for run)")
    evaluate.add_argument("--task", default="ioi", metavar="T", help="ioi, city, rand, or your pairs file")
    evaluate.add_argument("--pairs", type=int, default=None, metavar="N", help="prompt pairs (default 8 for built-in tasks)")
    evaluate.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the task's pairs")
    evaluate.add_argument("--bos", action=argparse.BooleanOptionalAction, default=True,
                          help="the beginning-of-sequence token in front of every prompt (default, as for run)")
    evaluate.add_argument("--curve", action="store_true", help="also MIB's curves of the file's scores: CPR, CMD, the "
                          "smallest circuits with f >= 0.8 and 0.9")
    evaluate.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    evaluate.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default cpu)")
    evaluate.add_argument("--dtype", default="float32", choices=DTYPES, help="weights' precision (default float32)")
    evaluate.add_argument("--batch-size", type=int, default=None, metavar="N", help="rows per forward pass (default: automatic)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    tasks = add("tasks", "list the built-in tasks with one example prompt pair each")
    tasks.add_argument("--model", default="default", metavar="M", help="whose tokenizer builds the examples")
    tasks.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser
