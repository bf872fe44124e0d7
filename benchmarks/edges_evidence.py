"""Evidence for edge AtP* (SPEC.md §11, issue #14 item 6) on a real model: exact edge effects, the cost
of verified recall of edge AtP / +QKfix / +GradDrop / AtP* / random, the circuit figure, and the
time and memory of edge AtP* against node AtP*, a forward+backward and node patching.

Stages (each cached under ``--out``, so a rerun resumes where the last one stopped):

1. ``readers``: the true top attention nodes by |mean exact effect| from the cached node truth
   (``benchmarks/results/study/truth_ioi.npz``); each q/k/v node names one reader (its input) at its
   position; plus the ``logits`` reader at the final position.
2. ``truth``: every edge into those readers patched exactly on every pair (``EdgePatcher.single``),
   one reader at a time, saved after each reader (``edge_truth.npz``).
3. ``estimates``: edge AtP, AtP+QKfix, AtP+GradDrop, AtP* over every edge of the model; the scores of
   the universe's edges and the global top edges are kept (``edge_estimates.npz``).
4. ``timing``: one subprocess per measurement (peak RSS is per process): plain forward+backward,
   node AtP* (``kinds="all"``), edge AtP* (every edge), edge patching and node patching per patch
   (``timing.json``).
5. ``report``: the recall-cost curves (``recall_cost.csv``, figure), the misses table, the circuit
   figure, ``summary.json``.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/edges_evidence.py [--stage all]
    ... benchmarks/edges_evidence.py --quick --out /tmp/edges_quick   # tiny random Llama, < 1 minute

``--quick`` runs the whole pipeline on a 3-layer random Llama with random prompt pairs (node truth
computed by ``acp`` on the spot) and writes everything, figures included, under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import atpstar
from atpstar import edges as E
from atpstar.edges.graph import READER_KINDS

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VARIANTS = {"AtP": (False, False), "AtP+QKfix": (True, False), "AtP+GradDrop": (False, True), "AtP*": (True, True)}
COLORS = {"AtP": "tab:blue", "AtP+QKfix": "tab:orange", "AtP+GradDrop": "tab:green", "AtP*": "tab:red",
          "random": "tab:gray", "oracle": "black"}
OUT = Path("benchmarks/results/edges")
FIGS = Path("docs/edges")
TOP_GLOBAL = 200
RANDOM_PERMUTATIONS = 200


# --- setting ------------------------------------------------------------------------------------
def setting(args):
    """(model, pairs, node truth: {kind: (P, L, U, T) per-pair exact effects})."""
    torch.manual_seed(0)
    if args.quick:
        from transformers import AutoModelForCausalLM, LlamaConfig

        cfg = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
                          initializer_range=0.3)
        hf = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()

        class Tok:
            def __call__(self, text, add_special_tokens=True):
                return {"input_ids": [ord(c) % 97 for c in text]}

            def decode(self, ids):
                return "".join(chr(65 + i % 26) for i in ids)

        model = atpstar.load_model(hf, tokenizer=Tok())
        gen = torch.Generator().manual_seed(1)
        clean = [torch.randint(0, 97, (8,), generator=gen) for _ in range(2)]
        noise = [c.clone() for c in clean]
        for x in noise:
            x[[1, 3, 5]] = torch.randint(0, 97, (3,), generator=gen)
        pairs = atpstar.PromptPairs.from_ids(clean, noise, [5, 7], [11, 13], metric="logit_diff")
        exact = atpstar.acp(model, pairs, kinds=["q", "k", "v"], per_pair=True, progress=False)
        node_truth = {k: exact.per_pair[atpstar.NodeKind(k)].numpy() for k in ("q", "k", "v")}
        return model, pairs, node_truth
    from studylib import truth as study_truth

    truth = study_truth.load("ioi")
    model = atpstar.load_model("default")
    pairs = truth.pairs if args.pairs is None else truth.pairs.select(args.pairs)
    idx = list(range(len(truth.pairs))) if args.pairs is None else args.pairs
    return model, pairs, {k: truth.attn[k][idx] for k in ("q", "k", "v")}


def setting_lengths(args) -> list[int]:
    """Token lengths of the pairs (without loading a model)."""
    if args.quick:
        return [8, 8]
    from studylib import truth as study_truth

    lengths = study_truth.load("ioi").pairs.lengths
    return lengths if args.pairs is None else [lengths[i] for i in args.pairs]


def choose_readers(graph, node_truth: dict, n: int, n_pos: int) -> pd.DataFrame:
    """The top-n q/k/v nodes by |mean exact effect| as readers (name, pos), plus logits at the final position."""
    rows = []
    for kind, values in node_truth.items():
        mean = np.nanmean(values, 0)
        for (layer, unit, pos), v in np.ndenumerate(mean):
            if np.isfinite(v):
                rows.append((kind, layer, unit, pos, float(v)))
    nodes = pd.DataFrame(rows, columns=["kind", "layer", "unit", "pos", "node_effect"])
    nodes = nodes.reindex(nodes.node_effect.abs().sort_values(ascending=False).index).head(n)
    head = np.where(nodes.kind == "q", "H", "G")
    nodes["reader"] = ["L%d.%s.%s%d" % (l, k, h, u) for l, k, h, u in zip(nodes.layer, nodes.kind, head, nodes.unit)]
    logits = pd.DataFrame([{"kind": "logits", "layer": graph.n_layers, "unit": -1, "pos": n_pos - 1,
                            "node_effect": np.nan, "reader": "logits"}])
    return pd.concat([nodes, logits], ignore_index=True)[["reader", "pos", "kind", "layer", "unit", "node_effect"]]


def universe(graph, readers: pd.DataFrame) -> E.EdgeSet:
    """Every edge into the chosen readers at their positions."""
    parts = []
    for name, pos in zip(readers.reader, readers.pos):
        r = int(graph.reader_index([name])[0])
        w = graph.valid[:, r].nonzero().flatten()
        parts.append(E.EdgeSet(w, torch.full_like(w, r), torch.full_like(w, int(pos))))
    out = parts[0]
    for p in parts[1:]:
        out = out.cat(p)
    return out


# --- stage 2: exact edge effects ----------------------------------------------------------------
def stage_truth(model, pairs, graph, readers, out: Path) -> dict:
    """Per-pair exact effects of every universe edge, one reader at a time, saved after each."""
    path = out / "edge_truth.npz"
    done = {}
    if path.exists():
        with np.load(path) as d:
            done = {k: d[k] for k in d.files}
    patcher = None
    for i, (name, pos) in enumerate(zip(readers.reader, readers.pos)):
        key = f"r{i}_{name}@{pos}"
        if key in done:
            continue
        patcher = patcher or E.EdgePatcher(model, pairs, graph=graph)
        edges = universe(graph, readers.iloc[[i]])
        t0 = time.perf_counter()
        values = patcher.single(edges).numpy().T.astype(np.float32)  # (P, N)
        seconds = time.perf_counter() - t0
        done[key] = values
        done[key + "_seconds"] = np.array([seconds, values.shape[1] * values.shape[0]])
        print(f"[truth] {key}: {values.shape[1]} edges x {values.shape[0]} pairs in {seconds:.1f}s "
              f"({1e3 * seconds / values.size:.1f} ms/patch)", flush=True)
        np.savez_compressed(path, **done)
    return done


def truth_table(graph, readers, done: dict, n_pos: int) -> pd.DataFrame:
    """One row per universe edge: ids, name, per-pair effects (columns p0..), mean effect."""
    edges = universe(graph, readers)
    per_pair = np.concatenate([done[f"r{i}_{n}@{p}"] for i, (n, p) in enumerate(zip(readers.reader, readers.pos))], 1)
    frame = E.edge_frame(graph, edges, torch.zeros(len(edges)), torch.zeros(len(edges))).drop(columns=["score", "effect"])
    frame.insert(0, "id", edges.ids(graph, n_pos).numpy())
    for p in range(per_pair.shape[0]):
        frame[f"p{p}"] = per_pair[p]
    frame["exact"] = np.nanmean(per_pair, 0)
    return frame


# --- stage 3: estimates --------------------------------------------------------------------------
def stage_estimates(model, pairs, graph, ids: np.ndarray, out: Path) -> dict:
    """Every variant's score/effect on the universe edges, its global top edges and its cost."""
    path = out / "edge_estimates.npz"
    done = {}
    if path.exists():
        with np.load(path) as d:
            done = {k: d[k] for k in d.files}
    for method, (qk, gd) in VARIANTS.items():
        if f"{method}_global_rank" in done:
            continue
        t0 = time.perf_counter()
        est = E.atp(model, pairs, qk_fix=qk, graddrop=gd, graph=graph)
        seconds = time.perf_counter() - t0
        cost = est.info["cost"]
        score, effect = est.score.flatten().numpy(), est.effect.flatten().numpy()
        top = est.ranked_ids(TOP_GLOBAL).numpy()
        done[f"{method}_score"], done[f"{method}_effect"] = score[ids].astype(np.float32), effect[ids].astype(np.float32)
        done[f"{method}_top_ids"], done[f"{method}_top_score"] = top, score[top].astype(np.float32)
        done[f"{method}_top_effect"] = effect[top].astype(np.float32)
        ranked = np.sort(np.where(np.isfinite(score), score, -np.inf))  # every edge of the model, ascending
        done[f"{method}_global_rank"] = len(ranked) - np.searchsorted(ranked, score[ids], side="right") + 1
        done["n_model_edges"] = np.array(int(np.isfinite(score).sum()))
        done[f"{method}_cost"] = np.array([cost.forward, cost.backward, cost.pairs, seconds])
        print(f"[estimates] {method}: {seconds:.1f}s, forward {cost.forward:.1f}, backward {cost.backward:.1f}", flush=True)
        np.savez_compressed(path, **done)
    return done


# --- stage 4: time and memory ---------------------------------------------------------------------
def child(args) -> None:
    """One measurement in its own process (peak RSS is per process); prints one JSON line."""
    torch.set_num_threads(1)
    model, pairs, node_truth = setting(args)
    print("RESULT " + json.dumps(measure(args, args.measure, model, pairs, node_truth)), flush=True)


def rss_mb(field: str) -> float:
    """VmRSS / VmHWM (peak) of this process in MiB (Linux); ru_maxrss where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure(args, what: str, model, pairs, node_truth) -> dict:
    """Time and peak memory of one measurement on pair ``args.timing_pair``; the peak RSS is reset
    after the model is loaded and warmed up, so ``peak_increase_mb`` is what the measured work adds."""
    pair = pairs.select([args.timing_pair])
    graph = E.EdgeGraph.of(model)
    extra = {}
    with torch.no_grad():  # warm-up (lazy initialisation), little memory
        atpstar.substrate.capture.run(model, pair.clean[0][None])
    if what in ("forward_backward", "node_atpstar", "edge_atpstar"):
        run_once = {
            "forward_backward": lambda: forward_backward(model, pair),
            "node_atpstar": lambda: atpstar.atp(model, pair, kinds="all", progress=False),
            "edge_atpstar": lambda: E.atp(model, pair, graph=graph),
        }[what]
        reset = reset_peak()
        base = rss_mb("VmRSS")
        t0 = time.perf_counter()
        run_once()
        seconds = time.perf_counter() - t0
    else:
        readers = choose_readers(graph, {k: v[[args.timing_pair]] for k, v in node_truth.items()}, args.readers,
                                 pairs.max_len).iloc[:-1]  # attention readers only: same layers/positions both ways
        readers = readers.assign(pos=readers.pos - (pairs.max_len - pair.max_len))  # the pair's own positions
        readers = readers[readers.pos >= 0]
        if what == "edge_patch":
            edges = universe(graph, readers)
            pick = torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[: args.patches]
            edges = edges.take(pick)
            patcher = E.EdgePatcher(model, pair, graph=graph)
            patcher.single(edges.take(slice(0, 8)))  # warm-up
            reset = reset_peak()
            base = rss_mb("VmRSS")
            t0 = time.perf_counter()
            patcher.single(edges)
            seconds, n = time.perf_counter() - t0, len(edges)
        else:  # node_patch: every q/k/v node at the readers' (layer, position)
            rows = []
            for layer, pos in sorted(set(zip(readers.layer, readers.pos))):
                rows += [f"L{layer}.q.H{h}@{pos}" for h in range(model.n_heads)]
                rows += [f"L{layer}.{k}.G{g}@{pos}" for k in ("k", "v") for g in range(model.n_kv_heads)]
            atpstar.acp(model, pair, nodes=rows[:8], progress=False)  # warm-up
            reset = reset_peak()
            base = rss_mb("VmRSS")
            t0 = time.perf_counter()
            atpstar.acp(model, pair, nodes=rows, progress=False)
            seconds, n = time.perf_counter() - t0, len(rows)
        extra = {"patches": n, "ms_per_patch": 1e3 * seconds / n}
    peak = rss_mb("VmHWM")
    return {"what": what, "seconds": seconds, "peak_rss_mb": peak, "base_rss_mb": base,
            "peak_increase_mb": peak - base, "peak_reset": reset, **extra}


def forward_backward(model, pair) -> None:
    """A plain forward with grad and a backward of the pair's metric (clean prompt)."""
    from atpstar.metrics import resolve
    from atpstar.substrate.capture import Intervention, run

    metric = resolve(None, pair)
    ids = pair.clean[0][None]
    hooks = Intervention(model, grad=True)
    with torch.enable_grad():
        logits = run(model, ids, hooks)
        metric(logits, pair).sum().backward()


def stage_timing(args, out: Path, model, pairs, node_truth) -> dict:
    """Every measurement in its own subprocess, run one after the other (``--quick``: in this process)."""
    path = out / "timing.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for what in ("forward_backward", "node_atpstar", "edge_atpstar", "edge_patch", "node_patch"):
        if what in results:
            continue
        if args.quick:
            results[what] = measure(args, what, model, pairs, node_truth)
            continue
        cmd = [sys.executable, __file__, "--measure", what, "--timing-pair", str(args.timing_pair),
               "--readers", str(args.readers), "--patches", str(args.patches)] + (["--quick"] if args.quick else [])
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            raise RuntimeError(f"timing {what} failed:\n{proc.stderr[-3000:]}")
        results[what] = json.loads(line[0][7:])
        print(f"[timing] {results[what]}", flush=True)
        path.write_text(json.dumps(results, indent=1))
    path.write_text(json.dumps(results, indent=1))
    return results


# --- stage 5: curves and figures -------------------------------------------------------------------
def verified_needed(rank: np.ndarray, value: np.ndarray, k: int) -> np.ndarray:
    """(k,) edges to verify in ranked order until the true top-j (j = 1..k) are all verified
    (ties in the truth: taken in ranking order, as atpstar.recall_cost does)."""
    order = np.lexsort((rank, -value))[:k]
    return np.maximum.accumulate(rank[order]) + 1


def ranks_of(score: np.ndarray) -> np.ndarray:
    """0-based rank of every entry by decreasing score (NaN last; ties by index)."""
    s = np.where(np.isfinite(score), score, -np.inf)
    order = np.lexsort((np.arange(len(s)), -s))
    rank = np.empty(len(s), dtype=np.int64)
    rank[order] = np.arange(len(s))
    return rank


def curves(table: pd.DataFrame, est: dict, ratio: float, k: int) -> tuple[pd.DataFrame, dict]:
    value = table.exact.abs().to_numpy()
    ks = np.arange(1, k + 1)
    rows = {"k": ks, "oracle": ks.astype(float)}
    estimation = {}
    for method in VARIANTS:
        forward, backward, n_pairs, _ = est[f"{method}_cost"]
        estimation[method] = (forward + backward * ratio) / n_pairs
        rows[method] = estimation[method] + verified_needed(ranks_of(est[f"{method}_score"]), value, k)
    gen = np.random.default_rng(0)
    rand = np.mean([verified_needed(gen.permutation(len(value)), value, k) for _ in range(RANDOM_PERMUTATIONS)], 0)
    rows["random"] = rand
    estimation["random"] = estimation["oracle"] = 0.0
    # the same with estimation costs from wall-clock time, calibrated on plain AtP (3 forwards + 1 backward)
    per_equivalent = est["AtP_cost"][3] / est["AtP_cost"][2] / estimation["AtP"]
    by_time = {m: est[f"{m}_cost"][3] / est[f"{m}_cost"][2] / per_equivalent for m in VARIANTS}
    for method in VARIANTS:
        rows[method + " (time)"] = rows[method] - estimation[method] + by_time[method]
    estimation.update({m + " (time)": v for m, v in by_time.items()})
    return pd.DataFrame(rows), estimation


def misses(table: pd.DataFrame, est: dict, top_true: int = 20, cut: int = 100) -> pd.DataFrame:
    """The true top-``top_true`` edges and each method's rank of them (within the universe)."""
    value = table.exact.abs().to_numpy()
    top = np.lexsort((np.arange(len(value)), -value))[:top_true]
    out = table.iloc[top][["name", "exact"]].copy()
    out.insert(0, "true_rank", np.arange(1, top_true + 1))
    for method in VARIANTS:
        out[method] = ranks_of(est[f"{method}_score"])[top] + 1
    for method in VARIANTS:
        out[method + " (all edges)"] = est[f"{method}_global_rank"][top]
    out["AtP_miss"] = out["AtP"] > cut
    out["AtP_miss_all_edges"] = out["AtP (all edges)"] > cut
    return out


def reader_sums(readers: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per reader: its node's exact effect, the sum of its edges' exact effects, its largest edge."""
    rows = []
    for name, pos, node in zip(readers.reader, readers.pos, readers.node_effect):
        part = table[(table.reader == name) & (table.pos == pos)]
        best = part.loc[part.exact.abs().idxmax()]
        rows.append({"reader": f"{name}@{pos}", "node_effect": node, "edges": len(part),
                     "sum_of_edges": float(part.exact.sum()), "largest_edge": best["name"],
                     "largest_effect": float(best.exact)})
    return pd.DataFrame(rows)


def plot_curves(frame: pd.DataFrame, path: Path, n_edges: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, time_based in zip(axes, (False, True)):
        for method in ["oracle", *VARIANTS, "random"]:
            column = method + " (time)" if time_based and method in VARIANTS else method
            ax.plot(frame.k, frame[column], label=method, color=COLORS[method], lw=1.6 if method != "oracle" else 1,
                    ls="--" if method in ("oracle", "random") else "-")
        ax.set_yscale("log")
        ax.set_xlabel("k (true top-k edges, by |mean exact effect|)")
        ax.set_ylabel("forward-pass equivalents per pair")
        ax.set_title("estimation cost: " + ("wall-clock time, calibrated on AtP" if time_based else
                                             "the engine's pass accounting"), fontsize=9)
        ax.axhline(n_edges, color="lightgray", lw=0.8)
        ax.text(frame.k.iloc[-1], n_edges, f"all {n_edges} edges", fontsize=7, ha="right", va="bottom", color="gray")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def plot_circuit(top: pd.DataFrame, group_size: int, path: Path, labels: dict, title: str) -> None:
    """The top verified edges as the report draws a circuit (``atpstar.run.report.circuit``): one column
    per position with the pairs' tokens there, layers bottom to top, one box per component, its colour key
    in the legend; drawn from the mean exact effects."""
    from atpstar.run.report.circuit import save_circuit

    frame = top.assign(effect=top.exact, effect_exact=top.exact, token=[labels.get(p, "") for p in top.pos])
    save_circuit(frame, path, limit=len(frame), group_size=group_size, dpi=130, title=title)


def position_labels(model, pairs) -> dict:
    """Aligned position -> the pairs' clean tokens there (distinct ones, joined by '/')."""
    labels = {}
    for clean in pairs.clean:
        offset = pairs.max_len - len(clean)
        for j, tok in enumerate(clean.tolist()):
            text = repr(model.tokenizer.decode([int(tok)])).strip("'")
            got = labels.setdefault(offset + j, [])
            if text not in got:
                got.append(text)
    return {p: "/".join(v) for p, v in labels.items()}


def stage_report(model, pairs, graph, readers, table, done, est, timing, out: Path, figs: Path, k: int) -> dict:
    ratio = timing.get("backward_ratio")
    if ratio is None:
        ratio = atpstar.measure_backward_ratio(model, pairs.clean[0][None], repeats=3)
        timing["backward_ratio"] = ratio
        (out / "timing.json").write_text(json.dumps(timing, indent=1))
    k = min(k, len(table))
    frame, estimation = curves(table, est, ratio, k)
    frame.to_csv(out / "recall_cost.csv", index=False, float_format="%.6g")
    miss = misses(table, est, min(20, len(table)), min(100, len(table) - 1))
    miss.to_csv(out / "misses.csv", index=False, float_format="%.6g")
    figs.mkdir(parents=True, exist_ok=True)
    plot_curves(frame, figs / "recall_cost.png", len(table),
                f"{model.name}: cost of verified recall over {len(table)} edges into {len(readers)} readers, "
                f"{len(pairs)} pairs")
    top = table.reindex(table.exact.abs().sort_values(ascending=False).index).head(25)
    plot_circuit(top, graph.n_heads // graph.n_kv_heads, figs / "circuit.png", position_labels(model, pairs),
                 f"{model.name}: the 25 largest verified edges (width = |mean exact effect|)")
    cut = min(100, len(table) - 1)
    missed = miss[miss.AtP_miss]
    summary = {
        "model": model.name, "pairs": len(pairs), "n_readers": len(readers), "n_edges": len(table),
        "backward_ratio": ratio, "estimation_per_pair": estimation,
        "cost_at": {str(kk): frame.loc[frame.k == kk, list(estimation)].iloc[0].to_dict()
                    for kk in (1, 5, 10, 20, 50, 100) if kk <= k},
        "atp_misses_top20_outside_top100": int(len(missed)),
        "recovered_by": {m: int((missed[m] <= cut).sum()) for m in ("AtP+QKfix", "AtP+GradDrop", "AtP*")},
        "n_model_edges": int(est["n_model_edges"]),
        "atp_misses_top20_outside_top100_of_all_edges": int(miss.AtP_miss_all_edges.sum()),
        "recovered_by_all_edges": {m: int((miss[miss.AtP_miss_all_edges][m + " (all edges)"] <= cut).sum())
                                   for m in ("AtP+QKfix", "AtP+GradDrop", "AtP*")},
        "readers": reader_sums(readers, table).to_dict("records"),
        "truth_seconds": float(sum(v[0] for kk, v in done.items() if kk.endswith("_seconds"))),
        "truth_patches": int(sum(v[1] for kk, v in done.items() if kk.endswith("_seconds"))),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    top.drop(columns=[c for c in top.columns if c.startswith("p") and c[1:].isdigit()]).to_csv(
        out / "top_edges.csv", index=False, float_format="%.6g")
    return summary


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny random Llama, 2 random pairs (under a minute)")
    ap.add_argument("--stage", default="all", choices=["all", "truth", "estimates", "timing", "report"])
    ap.add_argument("--out", type=Path, default=None, help=f"results folder (default {OUT}; figures in {FIGS})")
    ap.add_argument("--readers", type=int, default=16, help="top q/k/v nodes taken as readers (plus logits)")
    ap.add_argument("--pairs", type=lambda s: [int(x) for x in s.split(",")], default=None, help="e.g. 0,1")
    ap.add_argument("--k", type=int, default=100, help="largest k of the recall-cost curves")
    ap.add_argument("--timing-pair", type=int, default=None, help="pair of the timing (default: the longest)")
    ap.add_argument("--patches", type=int, default=300, help="edges patched in the per-patch timing")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.quick:
        args.readers = min(args.readers, 3)
        args.patches = min(args.patches, 40)
    if args.timing_pair is None:
        lengths = setting_lengths(args)
        args.timing_pair = int(np.argmax(lengths))
    if args.measure:
        return child(args)
    out = args.out or (Path("/tmp/edges_evidence_quick") if args.quick else OUT)
    figs = out / "figures" if args.quick else FIGS
    out.mkdir(parents=True, exist_ok=True)
    model, pairs, node_truth = setting(args)
    graph = E.EdgeGraph.of(model)
    readers = choose_readers(graph, node_truth, args.readers, pairs.max_len)
    readers.to_csv(out / "readers.csv", index=False, float_format="%.6g")
    stages = ["truth", "estimates", "timing", "report"] if args.stage == "all" else [args.stage]
    if "truth" in stages or "report" in stages:
        done = stage_truth(model, pairs, graph, readers, out)
        table = truth_table(graph, readers, done, pairs.max_len)
    if "estimates" in stages or "report" in stages:
        ids = universe(graph, readers).ids(graph, pairs.max_len).numpy()
        est = stage_estimates(model, pairs, graph, ids, out)
    timing = stage_timing(args, out, model, pairs, node_truth) if ("timing" in stages) else (
        json.loads((out / "timing.json").read_text()) if (out / "timing.json").exists() else {})
    if "report" in stages:
        summary = stage_report(model, pairs, graph, readers, table, done, est, timing, out, figs, args.k)
        print(json.dumps(summary, indent=1, default=float))
        return summary


if __name__ == "__main__":
    main()
