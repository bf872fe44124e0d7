"""The edge vocabulary: writers, readers, which edges exist, and their names.

At every position ``t`` the residual stream entering layer ℓ is a sum of *writes*. Writers, in
index order ``w``:

- ``embed`` (w = 0): the residual stream entering block 0 (token embedding, plus position
  embeddings and scaling where the model has them);
- then for each layer ℓ = 0..L−1: the attention writers of ℓ, then ``L{ℓ}.mlp`` (the MLP's write).
  The attention writers are one per head, ``L{ℓ}.head.H{h}``, when the attention write is a sum over
  heads: head ``h``'s write is its head output ``z`` through its slice of the output projection (a
  shared output-projection bias belongs to no head and stays in the clean part). Where the heads'
  writes are not additive there is ONE writer ``L{ℓ}.attn``, the layer's whole attention write:
  Gemma 3 normalises the attention output (``post_attention_layernorm``) before adding it to the
  residual stream, which mixes the heads.

Readers, in index order ``r``: for each layer ℓ, the input of each query head ``L{ℓ}.q.H{h}``, of
each key and value head ``L{ℓ}.k.G{g}``, ``L{ℓ}.v.G{g}`` (g < n_kv_heads: per key-value head under
GQA), of the MLP ``L{ℓ}.mlp``; last the unembedding ``logits`` (the final norm's input). Each reader
applies its own norm to its own copy of the residual stream.

An edge ``u -> v`` at position ``t`` joins a writer and a reader at the same position. It exists
when u's layer < v's layer (``embed`` is layer −1, ``logits`` layer L), plus attention ℓ → MLP ℓ in
sequential blocks (not in parallel-residual blocks such as GPT-NeoX/Pythia, where the attention
and the MLP read the same input). Its printable name is ``"{writer}@{t} -> {reader}@{t}"``, e.g.
``L3.head.H5@12 -> L7.k.G1@12``, ``embed@4 -> L0.q.H2@4``, ``L29.mlp@17 -> logits@17``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import Tensor

WRITER_KINDS = ("embed", "head", "attn", "mlp")
"""Writer kinds; ``EdgeGraph.writer_kind`` holds indices into this tuple."""
READER_KINDS = ("q", "k", "v", "mlp", "logits")
"""Reader kinds (``q``/``k``/``v`` as in :class:`~atpstar.types.NodeKind`); ``EdgeGraph.reader_kind`` indexes this."""
EMBED, HEAD, ATTN, MLP = range(4)
Q, K, V, MLP_IN, LOGITS = range(5)
WRITER_NAME = re.compile(r"^(?:(?P<embed>embed)|L(?P<layer>\d+)\.(?:(?P<head>head)\.H(?P<unit>\d+)|(?P<attn>attn)|(?P<mlp>mlp)))$")
"""A writer's name without a position (``embed``, ``L3.head.H5``, ``L3.attn``, ``L3.mlp``), parsed."""
READER_NAME = re.compile(r"^(?:(?P<logits>logits)|L(?P<layer>\d+)\.(?:(?P<qkv>[qkv])\.(?P<hg>[HG])(?P<unit>\d+)|(?P<mlp>mlp)))$")
"""A reader's name without a position (``L3.q.H5``, ``L3.k.G1``, ``L3.mlp``, ``logits``), parsed."""


def heads_additive(model) -> bool:
    """True when the model's attention write is a sum of per-head writes (not Gemma 3: a norm after the
    attention mixes the heads); read from the architecture table's row."""
    return model.arch.heads_additive


@dataclass(frozen=True, eq=False)
class EdgeGraph:
    """Writers and readers of one model, and the (W, R) table of which edges exist (at every position).

    Build it with :meth:`of`. Per writer: ``writer_names``, ``writer_layer`` (−1 for ``embed``),
    ``writer_kind`` (index into :data:`WRITER_KINDS`), ``writer_unit`` (head index, −1 otherwise).
    Per reader: ``reader_names``, ``reader_layer`` (L for ``logits``), ``reader_kind`` (index into
    :data:`READER_KINDS`), ``reader_unit`` (query head for q, key-value head for k/v, −1 otherwise).
    """

    writer_names: tuple
    writer_layer: Tensor
    writer_kind: Tensor
    writer_unit: Tensor
    reader_names: tuple
    reader_layer: Tensor
    reader_kind: Tensor
    reader_unit: Tensor
    valid: Tensor
    """(W, R) bool: True where the edge writer -> reader exists."""
    n_layers: int
    n_heads: int
    n_kv_heads: int
    per_head: bool
    """True: per-head attention writers ``L{ℓ}.head.H{h}``; False: one writer ``L{ℓ}.attn`` per layer."""
    parallel_residual: bool

    @classmethod
    def of(cls, model, per_head: bool | None = None) -> "EdgeGraph":
        """The graph of an atpstar :class:`~atpstar.substrate.model.Model`.

        ``per_head``: None = per-head writers where the heads' writes are additive, else one ``L{ℓ}.attn``
        writer per layer; True on a model whose attention write mixes heads is a ValueError."""
        additive = heads_additive(model)
        if per_head is None:
            per_head = additive
        elif per_head and not additive:
            raise ValueError(
                f"{model.name} ({model.arch.family}): per-head writers do not exist, its attention write is not a "
                "sum over heads (a norm after the attention mixes them); use per_head=None or False, whose "
                "attention writers are the whole layers' writes 'L{layer}.attn'")
        L, H, G = model.n_layers, model.n_heads, model.n_kv_heads
        writers = [("embed", -1, EMBED, -1)]
        for l in range(L):
            if per_head:
                writers += [(f"L{l}.head.H{h}", l, HEAD, h) for h in range(H)]
            else:
                writers.append((f"L{l}.attn", l, ATTN, -1))
            writers.append((f"L{l}.mlp", l, MLP, -1))
        readers = []
        for l in range(L):
            readers += [(f"L{l}.q.H{h}", l, Q, h) for h in range(H)]
            readers += [(f"L{l}.k.G{g}", l, K, g) for g in range(G)]
            readers += [(f"L{l}.v.G{g}", l, V, g) for g in range(G)]
            readers.append((f"L{l}.mlp", l, MLP_IN, -1))
        readers.append(("logits", L, LOGITS, -1))
        wn, wl, wk, wu = zip(*writers)
        rn, rl, rk, ru = zip(*readers)
        as_long = lambda v: torch.tensor(v, dtype=torch.long)  # noqa: E731
        wl, wk, rl, rk = map(as_long, (wl, wk, rl, rk))
        parallel = bool(model.arch.parallel_residual)
        valid = wl[:, None] < rl[None, :]
        if not parallel:
            same = (wl[:, None] == rl[None, :]) & (wk[:, None] != MLP) & (rk[None, :] == MLP_IN)
            valid |= same & (wk[:, None] != EMBED)
        return cls(tuple(wn), wl, wk, as_long(wu), tuple(rn), rl, rk, as_long(ru), valid, L, H, G, per_head, parallel)

    @classmethod
    def resolve(cls, model, graph=None) -> "EdgeGraph":
        """``graph`` checked against ``model``, or the model's own graph (:meth:`of`) when None: what every
        edge method's ``graph=`` argument goes through."""
        if graph is None:
            return cls.of(model)
        if not isinstance(graph, EdgeGraph):
            raise TypeError(f"graph must be an EdgeGraph of the model, e.g. graph=atpstar.EdgeGraph.of(model) (or "
                            f"None for the model's own); got {type(graph).__name__} {graph!r:.60}")
        mine = (model.n_layers, model.n_heads, model.n_kv_heads)
        if (graph.n_layers, graph.n_heads, graph.n_kv_heads) != mine:
            raise ValueError(f"graph={graph!r} was built for another model ({graph.n_layers} layers, {graph.n_heads} "
                             f"heads, {graph.n_kv_heads} kv heads; {model.name} has {mine[0]}, {mine[1]}, {mine[2]}): "
                             "pass graph=atpstar.EdgeGraph.of(model) or None")
        return graph

    # --- sizes and lookups ------------------------------------------------------------------------
    @property
    def n_writers(self) -> int:
        return len(self.writer_names)

    @property
    def n_readers(self) -> int:
        return len(self.reader_names)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_writers, self.n_readers

    def n_edges(self, n_pos: int = 1) -> int:
        """Number of edges over ``n_pos`` positions."""
        return int(self.valid.sum()) * n_pos

    def writer_index(self, names) -> Tensor:
        """(N,) writer indices of writer names (``"embed"``, ``"L3.head.H5"``, ``"L3.mlp"``)."""
        return self._index(names, self.writer_names, "writer")

    def reader_index(self, names) -> Tensor:
        """(N,) reader indices of reader names (``"L3.q.H5"``, ``"L3.k.G1"``, ``"L3.mlp"``, ``"logits"``)."""
        return self._index(names, self.reader_names, "reader")

    def _index(self, names, table: tuple, what: str) -> Tensor:
        import pandas as pd

        lookup = {n: i for i, n in enumerate(table)}
        codes = pd.Series(list(names), dtype=object).astype(str).str.strip().map(lookup)
        if codes.isna().any():
            bad = [n for n, c in zip(names, codes.isna()) if c][0]
            raise ValueError(f"unknown {what} {bad!r} ({int(codes.isna().sum())} unknown): {self._hint(bad, what)}")
        return torch.tensor(codes.to_numpy(dtype="int64"))

    def _hint(self, name: str, what: str) -> str:
        import re

        if what == "writer" and re.fullmatch(r"L\d+\.head\.H\d+", name) and not self.per_head:
            return ("this graph's attention writers are whole layers ('L{layer}.attn'): the model's attention write "
                    "is not a sum over heads (or the graph was built with per_head=False)")
        if what == "writer" and re.fullmatch(r"L\d+\.attn", name) and self.per_head:
            return "this graph has per-head attention writers 'L{layer}.head.H{h}' (build it with per_head=False for 'L{layer}.attn')"
        examples = {"writer": "'embed', 'L3.head.H5' (or 'L3.attn'), 'L3.mlp'",
                    "reader": "'L3.q.H5', 'L3.k.G1', 'L3.v.G1', 'L3.mlp', 'logits'"}[what]
        return (f"expected e.g. {examples}; this model has {self.n_layers} layers, {self.n_heads} heads and "
                f"{self.n_kv_heads} kv heads")

    def why_invalid(self, w: int, r: int) -> str:
        """Why the edge writer ``w`` -> reader ``r`` does not exist, in words (with what to do)."""
        wl, rl = int(self.writer_layer[w]), int(self.reader_layer[r])
        wname, rname = self.writer_names[w], self.reader_names[r]
        if wl > rl or (wl == rl and int(self.reader_kind[r]) != MLP_IN):
            return (f"reader {rname} (layer {rl}) reads the residual stream before writer {wname} (layer {wl}) writes it; "
                    "an edge goes from a writer to a reader in a later layer")
        if int(self.writer_kind[w]) == MLP:
            return f"{wname} writes after {rname} reads (the MLP reads its own layer's input); use a later layer's reader"
        return (f"{wname} -> {rname}: in this parallel-residual model the attention and the MLP of layer {wl} read the "
                "same input, so the attention does not feed its own layer's MLP; use a reader of a later layer")

    def require(self, writer, reader, names, where: str = "") -> None:
        """Raise ValueError naming the first of the edges ``writer[i] -> reader[i]`` (named ``names[i]``) that
        does not exist, with why and what to do; ``where`` prefixes the message (e.g. the file's name)."""
        missing = ~self.valid[writer, reader]
        if missing.any():
            i = int(missing.nonzero()[0])
            raise ValueError(f"{where}edge {names[i]!r} does not exist ({int(missing.sum())} such edges): "
                             f"{self.why_invalid(int(writer[i]), int(reader[i]))}")

    def __repr__(self) -> str:
        kind = "per-head" if self.per_head else "whole-layer attention"
        return (f"EdgeGraph({self.n_writers} writers ({kind}), {self.n_readers} readers, "
                f"{self.n_edges()} edges per position)")
