"""Scale: device placement (one device, accelerate device maps), half precision with float32
accumulation, the streaming backward (recomputed vs stored node values, explicit gradients), the
linearised QK fix, multi-process runs and the scaling benchmark's quick mode. CPU only."""

import subprocess
import sys

import pytest
import torch
from conftest import ARCH_NAMES, StubTokenizer, random_pairs, tiny_hf, tiny_model
from scipy.stats import spearmanr

import atpstar
from atpstar.methods import qkfix
from atpstar.substrate.capture import Intervention, run
from atpstar.substrate.devices import resolve_device, resolve_dtype
from atpstar.methods.gradients import CleanRun
from atpstar.methods.qkfix_linear import QKFix
from atpstar.types import ALL_KINDS, PROBS, NodeKind

SITES = {k.value for k in ALL_KINDS} | {PROBS}


def same_scores(a, b, atol=0.0, per_pair=False):
    for kind in a.kinds:
        for name in ("effect", "score", "mean_abs") + (("per_pair",) if per_pair else ()):
            x, y = getattr(a, name)[kind].double(), getattr(b, name)[kind].double()
            assert torch.allclose(x, y, atol=atol, rtol=0, equal_nan=True), (kind, name, (x - y).abs().nan_to_num().max())


# ----------------------------------------------------------------------------- devices and dtypes


def test_auto_device_is_cuda_only_when_available(monkeypatch):
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_dtype_names_and_auto_device_load():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    assert resolve_dtype(torch.float64) is torch.float64
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        resolve_dtype("int8")
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), device="auto", dtype="bfloat16")
    assert model.device == resolve_device("auto") and model.dtype is torch.bfloat16


def _layerwise_map(hf) -> dict:
    """Every block, the embeddings, the final norm and the head as separate accelerate entries."""
    inner_name, inner = next((n, m) for n, m in hf.named_children() if n != "lm_head")
    entries = []
    for name, child in inner.named_children():
        if isinstance(child, torch.nn.ModuleList):
            entries += [f"{inner_name}.{name}.{i}" for i in range(len(child))]
        else:
            entries.append(f"{inner_name}.{name}")
    return {e: "cpu" for e in entries + [n for n, _ in hf.named_children() if n != inner_name]}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_accelerate_hooks_work_with_every_method(arch):
    """A model dispatched by accelerate with a hook on every block (as on several GPUs): AtP*, exact
    patching with layer skipping (stubbed blocks) and its hooks all give the undispatched results."""
    from accelerate import dispatch_model

    hf = tiny_hf(arch)
    dispatch_model(hf, device_map=_layerwise_map(hf), force_hooks=True)
    spread = atpstar.load_model(hf, tokenizer=StubTokenizer())
    assert hasattr(spread.layers[1], "_hf_hook")
    plain = tiny_model(arch)
    pairs = random_pairs(lengths=(7, 9))
    same_scores(atpstar.atp(spread, pairs, kinds="all", progress=False),
                atpstar.atp(plain, pairs, kinds="all", progress=False), atol=1e-6)
    nodes = atpstar.NodeSet.every(plain, "attn", pairs.max_len)
    nodes = nodes.take(nodes.layer > 0)
    same_scores(atpstar.acp(spread, pairs, nodes=nodes, progress=False),
                atpstar.acp(plain, pairs, nodes=nodes, progress=False), atol=1e-6)
    assert all("forward" in block.__dict__ for block in spread.layers)  # accelerate's wrappers survive the stubs


def test_device_map_load_from_directory(tmp_path):
    from tinydir import save_tiny_model

    path = save_tiny_model(tmp_path / "m")
    mapped = atpstar.load_model(str(path), device_map={"": "cpu"})
    plain = atpstar.load_model(str(path))
    assert mapped.hf.hf_device_map == {"": "cpu"}
    pairs = atpstar.tasks.ioi(plain, n=2, seed=0)
    same_scores(atpstar.atp(mapped, pairs, kinds="all", progress=False),
                atpstar.atp(plain, pairs, kinds="all", progress=False))
    top = atpstar.atp(plain, pairs, kinds="attn", progress=False).to_frame().head(20)
    same_scores(atpstar.acp(mapped, pairs, nodes=top, progress=False), atpstar.acp(plain, pairs, nodes=top, progress=False))


# ----------------------------------------------------------------------------- half precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_estimates_accumulate_in_float32(dtype):
    """Given the half-precision model's own node values and gradients, AtP is their float32 product-sum
    (to float32 rounding), not a half-precision one (which would be off by ~1e-3 relative)."""
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=dtype)
    pairs = random_pairs(lengths=(8,))
    est = atpstar.atp(model, pairs, kinds=["v", "head", "neuron"], qk_fix=False, graddrop=False, progress=False)
    noise = Intervention(model, capture=frozenset({"v", "head", "neuron"}))
    with torch.no_grad():
        run(model, pairs.noise[0][None], noise)
    clean = CleanRun.forward(model, pairs.clean[0][None], pairs, atpstar.metrics.resolve(None, pairs),
                             {"v", "head", "neuron"}, graddrop=False)
    grads, _ = clean.full(retain=False)
    for layer in range(model.n_layers):
        for kind in (NodeKind.V, NodeKind.HEAD, NodeKind.NEURON):
            delta = noise.cache[(layer, kind.value)].double() - clean.like[(layer, kind.value)].double()
            delta = delta.to(dtype).double()  # atp keeps noise − clean in the model's dtype
            ref = delta * grads[(layer, kind.value)].double()
            ref = ref[0].T if kind is NodeKind.NEURON else ref[0].sum(-1)
            got = est.effect[kind][layer].double()
            assert got.dtype is torch.float64 and est.effect[kind].dtype is torch.float32
            assert (got - ref).abs().max() <= 1e-6 * ref.abs().max(), (layer, kind)


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_bfloat16_atp_star_is_close_to_float32(arch):
    """bf16 AtP* against float32 AtP* of the same (bf16-rounded) weights. The difference is the bf16
    model's own activation rounding (unit roundoff 2^-8; float16, 2^-11, gives ~8x smaller errors, see
    docs/scaling.md), measured up to 0.066 of the largest score on these saturated tiny models: allow
    0.1 (25 roundoffs), and the ranking must survive (Spearman >= 0.95, measured >= 0.98)."""
    pairs = random_pairs(lengths=(9, 9, 7), seed=3)
    reference = atpstar.load_model(tiny_hf(arch).to(torch.bfloat16).to(torch.float32), tokenizer=StubTokenizer())
    half = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.bfloat16)
    want = atpstar.atp(reference, pairs, kinds="all", progress=False)
    got = atpstar.atp(half, pairs, kinds="all", progress=False)
    for kind in ALL_KINDS:
        x, y = want.score[kind].flatten(), got.score[kind].flatten()
        assert y.dtype is torch.float32 and torch.equal(x.isfinite(), y.isfinite()), kind
        x, y = x[x.isfinite()], y[y.isfinite()]
        assert (x - y).abs().max() <= 0.1 * x.abs().max(), kind
        assert spearmanr(x, y).statistic >= 0.95, kind


# ----------------------------------------------------------------------------- streaming backward


@pytest.mark.parametrize("graddrop", [False, True])
def test_recomputed_node_values_equal_stored_ones(arch, graddrop):
    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(6, 8, 8), seed=5)
    kw = dict(kinds="all", graddrop=graddrop, per_pair=True, batch_size=2, progress=False)
    same_scores(atpstar.atp(model, pairs, recompute=True, **kw), atpstar.atp(model, pairs, recompute=False, **kw),
                atol=1e-12, per_pair=True)


def test_streamed_ordinary_gradients_equal_one_backward(arch):
    model = atpstar.load_model(tiny_hf(arch), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(7, 7))
    ids, metric = torch.stack(list(pairs.clean)), atpstar.metrics.resolve(None, pairs)
    clean = CleanRun.forward(model, ids, pairs, metric, SITES, graddrop=False)
    streamed, _ = clean.full(retain=False)
    hooks = Intervention(model, capture=frozenset(SITES), grad=True)
    with torch.enable_grad():
        value = metric(run(model, ids, hooks), pairs).sum()
    sites = list(streamed)
    direct = torch.autograd.grad(value, [hooks.cache[s] for s in sites], allow_unused=True)
    for site, want in zip(sites, direct):
        want = torch.zeros_like(streamed[site]) if want is None else want
        assert torch.allclose(streamed[site], want, atol=1e-12, rtol=0), site


@pytest.mark.parametrize("saturate", [1.0, 40.0])
@pytest.mark.parametrize("masked", [False, True])
def test_linear_qk_fix_equals_the_fix(saturate, masked):
    gen = torch.Generator().manual_seed(int(saturate) + masked)
    b, h, kv, t, d = 2, 4, 2, 9, 5
    q, q_noise = (torch.randn(b, h, t, d, generator=gen, dtype=torch.float64) * saturate for _ in range(2))
    k, k_noise = (torch.randn(b, kv, t, d, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = None
    if masked:  # causal plus two padded keys, in the models' finfo.min convention
        mask = torch.full((t, t), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1).expand(b, 1, t, t).clone()
        mask[..., :2] = torch.finfo(torch.float64).min
    fix = QKFix(q, k, 0.4, q_noise=q_noise, k_noise=k_noise, mask=mask, softcap=30.0)
    for _ in range(3):  # one precomputation serves every gradient
        g = torch.randn(b, h, t, t, generator=gen, dtype=torch.float64)
        want_q = qkfix.query_fix(q, q_noise, k, g, 0.4, mask, 30.0)
        want_k = qkfix.key_fix(q, k, k_noise, g, 0.4, mask, 30.0)
        assert want_k.abs().max() > 1e-3
        assert torch.allclose(fix.query(g), want_q, atol=1e-12, rtol=0)
        assert torch.allclose(fix.key(g), want_k, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- many processes


def _distributed_run(model):
    pairs = random_pairs(lengths=(6, 8, 6, 8, 8), seed=11)  # 5 pairs, two lengths: uneven shards
    star = atpstar.atp(model, pairs, kinds="all", per_pair=True, batch_size=2, progress=False)
    exact = atpstar.acp(model, pairs, kinds="attn", per_pair=True, progress=False)
    verified = atpstar.verify(model, pairs, star, budget=atpstar.Budget(nodes=60), chunk=25, batch_size=7, progress=False)
    exact.info["verified"] = (verified.per_pair, verified.cost.forward, [n.name for n in verified.nodes.to_nodes()])
    exact.info["diagnosis"] = atpstar.diagnose(model, pairs, ["L2.q.H0@7"], kinds="attn", samples=30, p=0.2,
                                               bound="normal", progress=False).to_dict()
    return star, exact


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    assert atpstar.distributed.init() == torch.device("cpu") and dist.get_backend() == "gloo"
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    star, exact = _distributed_run(model)
    torch.save({"star": star, "exact": exact, "rank": atpstar.distributed.rank(),
                "share": len(atpstar.distributed.shard(range(5)))}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_processes_equal_one(tmp_path):
    """2 gloo processes on localhost split the pairs of AtP* and of exact patching and all-reduce them:
    every rank ends with the one-process result (float64, to rounding of the sums)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(tmp_path / "result")
    mp.spawn(_worker, args=(2, port, out), nprocs=2, join=True)
    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    star, exact = _distributed_run(model)
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        assert got["rank"] == rank and got["share"] == (3, 2)[rank]
        same_scores(got["star"], star, atol=1e-12, per_pair=True)
        same_scores(got["exact"], exact, atol=1e-12, per_pair=True)
        assert got["exact"].info["patches"] == exact.info["patches"] > 0  # work counted over both ranks
        assert got["star"].n_pairs == 5
        # verification's batches were split between the ranks: the same exact effects and cost
        per_pair, forward, names = got["exact"].info["verified"]
        assert names == exact.info["verified"][2]
        torch.testing.assert_close(per_pair, exact.info["verified"][0], atol=1e-12, rtol=0, equal_nan=True)
        assert forward == pytest.approx(exact.info["verified"][1], rel=1e-12)
        # the diagnostic's subsets were split between the ranks: the same bound as one process
        assert got["exact"].info["diagnosis"]["theta"] == pytest.approx(exact.info["diagnosis"]["theta"], rel=1e-9)


# ----------------------------------------------------------------------------- batching of exact patches


def _modelled_cost(pos, layer, slices, n_layers, n_tok, overhead):
    frac = lambda p, l: (n_layers - l) * (n_tok - p) / (n_layers * n_tok)  # noqa: E731
    return sum(frac(int(pos[s].min()), int(layer[s].min())) * (overhead + s.stop - s.start) for s in slices)


@pytest.mark.parametrize("overhead", [0.0, 1.0, 50.0])
def test_plan_batches_covers_jobs_and_beats_one_batch_per_cell(overhead):
    from atpstar.substrate.batching import plan_batches

    gen = torch.Generator().manual_seed(0)
    pos, layer = torch.randint(0, 12, (300,), generator=gen), torch.randint(0, 8, (300,), generator=gen)
    order = torch.argsort(pos * 8 + layer, stable=True)
    pos, layer = pos[order], layer[order]
    slices = plan_batches(pos, layer, 8, 12, max_rows=16, overhead=overhead)
    assert slices[0].start == 0 and slices[-1].stop == 300
    assert all(a.stop == b.start for a, b in zip(slices, slices[1:]))
    assert max(s.stop - s.start for s in slices) <= 16
    _, counts = torch.unique_consecutive(pos * 8 + layer, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    cells = [slice(a, min(a + 16, a0 + c)) for a0, c in zip(starts.tolist(), counts.tolist()) for a in range(a0, a0 + c, 16)]
    assert _modelled_cost(pos, layer, slices, 8, 12, overhead) <= _modelled_cost(pos, layer, cells, 8, 12, overhead) + 1e-9
    if overhead >= 50:  # a costly forward pass: sparse cells share full batches
        assert len(slices) <= 300 // 16 + 3


def test_sparse_exact_patching_shares_forward_passes():
    """A sparse node set (each (position, layer) cell one node) runs in fewer forwards than cells, with
    the same effects as one patch per forward (float64)."""
    from atpstar.substrate import batching

    model = atpstar.load_model(tiny_hf("llama"), tokenizer=StubTokenizer(), dtype=torch.float64)
    pairs = random_pairs(lengths=(9,), seed=4)
    every = atpstar.NodeSet.every(model, "all", pairs.max_len)
    pick = torch.randperm(len(every), generator=torch.Generator().manual_seed(1))[:40]
    nodes = every.take(pick)
    batched = atpstar.acp(model, pairs, nodes=nodes, progress=False)
    one_each = atpstar.acp(model, pairs, nodes=nodes, batch_size=1, progress=False)
    same_scores(batched, one_each, atol=1e-12)
    cells = len(torch.unique(nodes.pos * model.n_layers + nodes.layer))
    assert batched.info["batches"] < min(cells, batched.info["patches"])
    assert 16 <= batching.memory_budget_mb("cpu") <= 16384


# ----------------------------------------------------------------------------- the scaling benchmark


def test_scaling_benchmark_quick_mode(tmp_path, monkeypatch):
    """``python -m benchmarks.scaling --quick`` runs every sweep on a tiny config and rewrites only the measured
    part of the document (between its markers)."""
    from benchmarks import scaling

    out = tmp_path / "scaling.md"
    out.write_text(f"intro\n{scaling.BEGIN}\nstale numbers\n{scaling.END}\noutro\n")
    scaling.main(["--quick", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "stale numbers" not in text
    for title in ("Sequence length", "Prompt pairs", "Width and depth", "Half precision"):
        assert f"### {title}" in text, title
    rows = [line for line in text.splitlines() if line.startswith("| bfloat16")]
    assert len(rows) == 1 and "nan" not in rows[0]
