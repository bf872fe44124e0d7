"""The run's edge stage: edge scores of every edge-capable method (same contract as the stages of
:mod:`.stages`: it takes the run's Context, skips what the run folder already holds, records its cost), and
what differs for edges in the verification and diagnostic stages written once in :mod:`.unit_stages`
(the ``--edge-universe`` the edge diagnostic bounds, its size and its words)."""

from __future__ import annotations

import warnings

from .design import count_units, first_moving
from .registry import RUN_METHODS
from ..cost import Cost
from .folder import load_edge_scores, method_slug, save_edge_scores
from .stages import Context


def edges(ctx: Context) -> None:
    """Every edge ranked by each edge method of ``--method`` (an AtP variant or a joint-patching baseline,
    a row of :data:`.registry.RUN_METHODS` with an edge function); the first one's ranking is verified (:mod:`.unit_stages`), the others' edge
    scores are kept (``edge-scores-<method>.pt``) for comparison."""
    cfg = ctx.cfg
    if cfg.level == "nodes":
        return
    for i, method in enumerate(m for m in cfg.methods if RUN_METHODS[m].edge):
        scores = _edge_method(ctx, method, "edges" if i == 0 else f"edges:{method}")
        if i == 0:
            ctx.edge_scores = scores


def _edge_method(ctx: Context, method: str, stage: str):
    """One method's EdgeScores over every edge: read back from the run folder, or estimated and saved."""
    cfg = ctx.cfg
    file = ctx.folder.stage(f"edge-scores-{method_slug(method)}.pt")
    if file.is_file():
        return load_edge_scores(file)
    ctx.say(f"estimating every edge with {method}...")
    if method in ("blocks", "subsampling"):
        plan, slow = baseline_plan(ctx.model, ctx.pairs, method)
        if slow:
            warnings.warn(plan, stacklevel=2)
        else:
            ctx.say(plan)
    spec = RUN_METHODS[method]
    options = spec.options(edges=True, seed=cfg.seed, batch_size=cfg.batch_size)
    scores = spec.edge_function()(ctx.model, ctx.pairs, progress=ctx.progress, **options)
    cost = Cost.of(scores)
    if cost.backward and cost.backward_ratio is None:  # the estimator did not time its backward passes
        from dataclasses import replace

        from ..substrate.timing import measure_backward_ratio

        group = next(iter(ctx.pairs.groups()))
        cost = replace(cost, backward_ratio=measure_backward_ratio(ctx.model, group.clean[:1]))
        scores.info["cost"] = cost
    save_edge_scores(scores, file)
    g = scores.graph
    ctx.record(stage, method=method, edges=int(scores.score.isfinite().sum()), n_heads=g.n_heads,
               n_kv_heads=g.n_kv_heads, per_head=g.per_head, d_model=ctx.model.d_model, cost=cost.to_dict(),
               per_pair=cost.per_pair(), seconds=cost.seconds)
    ctx.say(f"{method}: {ctx.meta['stages'][stage]['edges']:,} edges in {cost.seconds:.1f}s "
            f"({cost.per_pair():.1f} forward-pass equivalents per pair)")
    return scores


# --- what differs in the edge lane of the verification and diagnostic stages (:mod:`.unit_stages`) -------
def verifying(ctx: Context, stop) -> None:
    """``--stop theta`` on edges: its subsets are drawn over ``--edge-universe``."""
    stop.options.update(edges=edge_universe(ctx), progress=ctx.progress)
    ctx.say(f"--stop theta: {universe_words(ctx)}; {stop.samples} random subsets at p = {stop.p:g} are patched "
            "at the first check, then re-bounded as edges are verified")


def verified(ctx: Context, v) -> None:
    """The edge estimation stage's record gains how many edges were verified and why it stopped."""
    ctx.meta["stages"]["edges"]["verified"] = len(v)
    ctx.meta["stages"]["edges"]["stopped"] = v.stopped
    ctx.folder.write_meta(ctx.meta)


def diagnosed(ctx: Context):
    """(the verified edges, options) of a fresh edge diagnostic: its universe is every edge of the graph
    (or ``--edge-universe``) but the verified ones."""
    frame = ctx.verified_edges
    verified = (frame[["writer", "reader", "pos"]] if {"writer", "reader", "pos"} <= set(frame.columns)
                else frame["name"].tolist())
    return verified, {"graph": ctx.edge_scores.graph, "edges": edge_universe(ctx)}


def statement(ctx: Context, d) -> str:
    if ctx.plan.edge_universe is None:
        return d.statement
    return f"Universe (--edge-universe {ctx.cfg.edge_universe}): {universe_words(ctx)}. {d.statement}"


def extra(ctx: Context) -> dict:
    return {"edge_universe": ctx.cfg.edge_universe or "all"}


def count(ctx: Context, ranking, v=None) -> int:
    """The edges the edge diagnostic will bound: :func:`.design.count_units` of the ranked ones, or of those of
    ``--edge-universe`` (``v``, an edge Verification: less those it verified)."""
    universe = edge_universe(ctx)
    if universe is None:
        return count_units(ctx, ranking, v)
    import torch

    graph, n_pos = ctx.edge_scores.graph, ctx.pairs.max_len
    keep = universe.pos >= first_moving(ctx.pairs)
    if v is not None:
        ids = universe.ids(graph, n_pos)
        keep &= torch.isin(ids, v.ranking.ids(graph, n_pos)) & ~torch.isin(ids, v.nodes.ids(graph, n_pos))
    return max(1, int(keep.sum()))


def edge_universe(ctx: Context):
    """``--edge-universe`` as an EdgeSet over the first method's ranking (None: every edge)."""
    import torch

    from ..edges.edgeset import EdgeSet

    parsed = ctx.plan.edge_universe
    if parsed is None:
        return None
    what, n = parsed
    scores = ctx.edge_scores
    score = scores.score.double()
    if what == "top":
        return scores.edges(n)  # the ranking's top n, best first
    per_reader = score.nan_to_num(0.0).sum((0, 2))
    readers = per_reader.topk(min(n, int((per_reader > 0).sum()) or 1)).indices
    every = EdgeSet.every(scores.graph, score.shape[2])
    return every.take(torch.isin(every.reader, readers))


def universe_words(ctx: Context) -> str:
    parsed = ctx.plan.edge_universe
    method = ctx.cfg.methods[0]
    if parsed is None:
        n = int(ctx.edge_scores.score.isfinite().sum())
        return (f"every edge of the model, {n:,} at all positions (--edge-universe top:M or readers:N bounds a part "
                "of them with fewer subsets)")
    what, n = parsed
    if what == "top":
        return f"the {n:,} top-ranked edges of {method}'s ranking"
    universe = edge_universe(ctx)
    names = [ctx.edge_scores.graph.reader_names[i] for i in universe.reader.unique().tolist()]
    return (f"every edge into the {len(names)} readers with the largest summed {method} edge score, {len(universe):,} "
            f"edges: {', '.join(names)}")


SLOW_PATCHES = 20_000
"""Joint patches per pair above which a baseline over every edge is announced as a warning (hours on a CPU)."""


def baseline_plan(model, pairs, method: str) -> tuple[str, bool]:
    """(what ``method`` over every edge will patch, in numbers; whether that is more than :data:`SLOW_PATCHES`
    per pair). Blocks: one joint patch per block of 16 edges into one reader (its default size); Subsampling:
    its 1000 subsets (p = 0.01)."""
    from ..edges.graph import EdgeGraph

    graph, n_pos, n_pairs = EdgeGraph.of(model), pairs.max_len, len(pairs)
    into = graph.valid.sum(0).long() * n_pos  # edges into each reader, every position
    n_edges = int(into.sum())
    if method == "blocks":
        patches = int(((into + 15) // 16).sum())
        what = f"{patches:,} blocks of up to 16 edges into one reader"
    else:
        patches = 1000
        what = f"1000 random subsets of about {0.01 * n_edges:,.0f} edges (p = 0.01)"
    text = (f"{method} over every edge: {n_edges:,} edges in {what}, one joint patch per pair each: {patches:,} "
            f"patches per pair, {patches * n_pairs:,} in all")
    slow = patches > SLOW_PATCHES
    if slow:
        text += (" (SmolLM2 on one CPU thread: ~20 patches/s, so hours; it is not checkpointed, an interrupted run "
                 "redoes it). Rank a part of the graph from Python instead, atpstar.edges.blocks(model, pairs, "
                 "edges=...) (docs/edges.md), or run on a GPU")
    return text, slow
