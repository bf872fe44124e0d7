"""Tests for atpstar.methods.qkfix: the AtP* query/key fix checked against brute-force patching."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from atpstar.methods.qkfix import attention_scores, key_fix, query_fix

F64, F32 = torch.float64, torch.float32
MASK_KINDS = ["causal", "padding", "causal_padding", "padding_neginf", "padding_bool"]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: intra-op threads only add overhead (badly so on a loaded machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- references


def ref_scores(q, k, scale, mask, softcap):
    """Independent score computation: repeat_kv by repeat_interleave, full additive mask."""
    group = q.shape[1] // k.shape[1]
    k_rep = k.repeat_interleave(group, dim=1)
    r = torch.einsum("bhtd,bhsd->bhts", q, k_rep) * scale
    if softcap is not None:
        r = softcap * torch.tanh(r / softcap)
    return r + mask


def ref_query_fix(q, q_noise, k, g, scale, mask, softcap):
    """Patch query t alone, recompute the whole softmax, sum (a' - a) g over everything."""
    a = torch.softmax(ref_scores(q, k, scale, mask, softcap), -1)
    out = torch.zeros(q.shape[:3], dtype=q.dtype)
    for t in range(q.shape[2]):
        q_mod = q.clone()
        q_mod[:, :, t] = q_noise[:, :, t]
        a_new = torch.softmax(ref_scores(q_mod, k, scale, mask, softcap), -1)
        out[:, :, t] = ((a_new - a) * g).sum((-1, -2))
    return out


def ref_key_fix(q, k, k_noise, g, scale, mask, softcap):
    """Patch the single shared key (kv head i, position u) for all heads at once."""
    a = torch.softmax(ref_scores(q, k, scale, mask, softcap), -1)
    out = torch.zeros(k.shape[:3], dtype=q.dtype)
    for i in range(k.shape[1]):
        for u in range(k.shape[2]):
            k_mod = k.clone()
            k_mod[:, i, u] = k_noise[:, i, u]
            a_new = torch.softmax(ref_scores(q, k_mod, scale, mask, softcap), -1)
            out[:, i, u] = ((a_new - a) * g).sum((1, 2, 3))
    return out


def first_order_atp(q, q_noise, k, k_noise, g, scale, mask, softcap):
    """Plain AtP: gradient of sum(softmax(s) * g) w.r.t. the scores times the score change."""
    s = ref_scores(q, k, scale, mask, softcap).requires_grad_(True)
    (torch.softmax(s, -1) * g).sum().backward()
    grad = s.grad
    dq = ref_scores(q_noise, k, scale, mask, softcap) - s.detach()  # row t <-> query t
    dk = ref_scores(q, k_noise, scale, mask, softcap) - s.detach()  # column u <-> key u
    atp_q = (grad * dq).sum(-1)
    b, kv, n = k.shape[:3]
    atp_k = (grad * dk).sum(-2).reshape(b, kv, -1, n).sum(2)
    return atp_q, atp_k


# ----------------------------------------------------------------------------- cases


def make_case(seed, b, kv, group, t, s, d, scale, magnitude, mask_kind, softcap):
    """Random float64 case; q/k scaled so that typical |score| ~ magnitude."""
    gen = torch.Generator().manual_seed(seed)
    h = kv * group
    if mask_kind.startswith("causal"):
        s = t
    std = (magnitude / (scale * d**0.5)) ** 0.5

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=F64)

    case = dict(
        q=rnd(b, h, t, d) * std, q_noise=rnd(b, h, t, d) * std,
        k=rnd(b, kv, s, d) * std, k_noise=rnd(b, kv, s, d) * std,
        g=rnd(b, h, t, s), scale=scale, softcap=softcap,
    )
    visible = torch.ones(b, 1, t, s, dtype=torch.bool)
    if mask_kind.startswith("causal"):
        visible &= torch.ones(t, s, dtype=torch.bool).tril()
    if "padding" in mask_kind:
        keys = torch.rand(b, 1, 1, s, generator=gen) < 0.6
        keys[..., 0] = True  # every row keeps >= 1 visible key
        visible = visible & keys
    fill = float("-inf") if mask_kind.endswith("neginf") else torch.finfo(F64).min
    additive = torch.zeros(b, 1, t, s, dtype=F64).masked_fill(~visible, fill)
    case["ref_mask"] = additive
    case["visible"] = visible.expand(b, h, t, s)
    case["mask"] = {"causal": None, "padding_bool": visible}.get(mask_kind, additive)
    return case


def cast(case, dtype):
    out = dict(case)
    for name in ("q", "q_noise", "k", "k_noise", "g"):
        out[name] = case[name].to(dtype)
    if isinstance(case["mask"], torch.Tensor) and case["mask"].is_floating_point():
        out["mask"] = case["mask"].clamp(min=torch.finfo(dtype).min).to(dtype)
    return out


def run_fixes(c, **kw):
    args = dict(scale=c["scale"], mask=c["mask"], softcap=c["softcap"], **kw)
    iq = query_fix(c["q"], c["q_noise"], c["k"], c["g"], **args)
    ik = key_fix(c["q"], c["k"], c["k_noise"], c["g"], **args)
    return iq, ik


def run_refs(c):
    """float64 brute force on exactly the (possibly rounded) inputs of the case."""
    q, qn, k, kn, g = (c[n].to(F64) for n in ("q", "q_noise", "k", "k_noise", "g"))
    args = (c["scale"], c["ref_mask"], c["softcap"])
    return ref_query_fix(q, qn, k, g, *args), ref_key_fix(q, k, kn, g, *args)


def max_err(out, ref):
    """Largest |out - ref| / max(1, |ref|)."""
    return ((out.to(F64) - ref).abs() / ref.abs().clamp(min=1.0)).max().item()


case_params = dict(
    seed=st.integers(0, 2**31 - 1), b=st.integers(1, 2), kv=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2, 3]), t=st.integers(1, 12), s=st.integers(1, 12),
    d=st.sampled_from([1, 3, 8]), scale=st.sampled_from([0.125, 0.35, 1.0]),
    magnitude=st.sampled_from([1.0, 5.0, 100.0, 1000.0]),
    mask_kind=st.sampled_from(MASK_KINDS), softcap=st.sampled_from([None, 30.0]),
)


# ----------------------------------------------------------------------------- property tests


@settings(max_examples=120, deadline=None, derandomize=True)
@given(**case_params)
def test_float64_matches_brute_force(**p):
    c = make_case(**p)
    iq, ik = run_fixes(c)
    rq, rk = run_refs(c)
    assert iq.dtype == F64 and ik.dtype == F64
    assert iq.shape == rq.shape and ik.shape == rk.shape
    assert max_err(iq, rq) <= 1e-9
    assert max_err(ik, rk) <= 1e-9


F32_TOL = 2e-4  # absolute (relative above 1) error vs float64 brute force, g ~ N(0, 1)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(**{**case_params, "magnitude": st.sampled_from([100.0, 300.0, 1000.0])})
def test_float32_saturated_finite_and_accurate(**p):
    c = cast(make_case(**p), F32)
    iq, ik = run_fixes(c)
    assert iq.dtype == F32 and ik.dtype == F32
    assert torch.isfinite(iq).all() and torch.isfinite(ik).all()
    rq, rk = run_refs(c)
    assert max_err(iq, rq) <= F32_TOL
    assert max_err(ik, rk) <= F32_TOL


@settings(max_examples=30, deadline=None, derandomize=True)
@given(**{**case_params, "magnitude": st.sampled_from([1.0, 1000.0])})
def test_probs_argument_and_masked_gradients_do_not_matter(**p):
    c = make_case(**p)
    base_q, base_k = run_fixes(c)
    probs = torch.softmax(ref_scores(c["q"], c["k"], c["scale"], c["ref_mask"], c["softcap"]), -1)
    with_q, with_k = run_fixes(c, probs=probs)
    assert max_err(with_q, base_q) <= 1e-12 and max_err(with_k, base_k) <= 1e-12
    # gradients (and given probs) at masked (t, j) entries are never read: NaN there is harmless
    junk = dict(c, g=c["g"].masked_fill(~c["visible"], float("nan")))
    for kw in ({}, {"probs": probs.masked_fill(~c["visible"], float("nan"))}):
        nq, nk = run_fixes(junk, **kw)
        assert max_err(nq, base_q) <= 1e-12 and max_err(nk, base_k) <= 1e-12
    nq, nk = run_fixes(junk)
    assert torch.equal(nq, base_q) and torch.equal(nk, base_k)


# ----------------------------------------------------------------------------- exact zeros


@pytest.mark.parametrize("dtype", [F64, F32])
@pytest.mark.parametrize("magnitude", [1.0, 1000.0])
@pytest.mark.parametrize("softcap", [None, 30.0])
def test_identical_noise_gives_exact_zero(dtype, magnitude, softcap):
    c = cast(make_case(3, 2, 2, 2, 9, 9, 4, 0.5, magnitude, "causal", softcap), dtype)
    c = dict(c, q_noise=c["q"].clone(), k_noise=c["k"].clone())
    iq, ik = run_fixes(c)
    assert torch.equal(iq, torch.zeros_like(iq)) and torch.equal(ik, torch.zeros_like(ik))


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
@pytest.mark.parametrize("magnitude", [1.0, 1000.0])
def test_single_key_gives_exact_zero(mask_kind, magnitude):
    c = make_case(5, 2, 2, 3, 1, 1, 4, 1.0, magnitude, mask_kind, None)  # T = S = 1
    iq, ik = run_fixes(c)
    assert torch.equal(iq, torch.zeros_like(iq)) and torch.equal(ik, torch.zeros_like(ik))


@pytest.mark.parametrize("dtype", [F64, F32])
def test_causal_first_query_is_exact_zero(dtype):
    """Row 0 of a causal mask sees one key: patching q_0 cannot change anything."""
    c = cast(make_case(7, 2, 1, 3, 8, 8, 4, 1.0, 1000.0, "causal", None), dtype)
    iq, _ = run_fixes(c)
    assert torch.equal(iq[..., 0], torch.zeros_like(iq[..., 0]))
    assert (iq[..., 1:] != 0).any()


@pytest.mark.parametrize("kind", ["padding", "padding_neginf", "padding_bool", "causal_padding"])
@pytest.mark.parametrize("dtype", [F64, F32])
def test_masked_keys_are_exact_zero(kind, dtype):
    c = cast(make_case(11, 3, 2, 2, 7, 10, 4, 1.0, 300.0, kind, 30.0), dtype)
    _, ik = run_fixes(c)
    masked_keys = ~c["visible"].any(dim=2)[:, ::2]  # (B, KV, S): key hidden from every row
    assert masked_keys.any()
    assert torch.equal(ik[masked_keys], torch.zeros_like(ik[masked_keys]))
    assert torch.isfinite(ik).all()


def test_mask_formats_agree():
    base = make_case(13, 2, 1, 2, 6, 9, 4, 1.0, 50.0, "padding", None)
    visible = base["visible"][:, :1]
    masks = [visible, torch.zeros_like(base["ref_mask"]).masked_fill(~visible, float("-inf")),
             torch.zeros_like(base["ref_mask"]).masked_fill(~visible, torch.finfo(F32).min)]
    results = [run_fixes(dict(base, mask=m)) for m in masks]
    for iq, ik in results[1:]:
        assert torch.equal(iq, results[0][0]) and torch.equal(ik, results[0][1])


# ----------------------------------------------------------------------------- GQA and scores


@pytest.mark.parametrize("kv,group", [(1, 1), (1, 4), (2, 3), (3, 2), (4, 1)])
@pytest.mark.parametrize("softcap", [None, 20.0])
def test_attention_scores_follow_repeat_kv(kv, group, softcap):
    c = make_case(17, 2, kv, group, 5, 5, 3, 0.7, 5.0, "causal", softcap)
    s = attention_scores(c["q"], c["k"], c["scale"], softcap=softcap)
    for h in range(kv * group):
        r = c["q"][:, h] @ c["k"][:, h // group].transpose(-1, -2) * c["scale"]
        if softcap is not None:
            r = softcap * torch.tanh(r / softcap)
        expected = r + c["ref_mask"][:, 0]
        assert torch.allclose(s[:, h], expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("magnitude", [1.0, 1000.0])
def test_gqa_key_effect_is_sum_over_group_heads(magnitude):
    """A shared key changes all heads of its group at once; the effect is the sum over heads."""
    kv, group = 2, 3
    c = make_case(19, 2, kv, group, 8, 8, 4, 0.5, magnitude, "causal", None)
    ik = key_fix(c["q"], c["k"], c["k_noise"], c["g"], c["scale"])
    # per query head: give every head its own copy of the key (KV == H), then sum the group
    per_head = key_fix(c["q"], c["k"].repeat_interleave(group, 1),
                       c["k_noise"].repeat_interleave(group, 1), c["g"], c["scale"])
    assert torch.allclose(ik, per_head.reshape(2, kv, group, 8).sum(2), rtol=1e-12, atol=1e-14)
    _, rk = run_refs(c)  # brute force patches the shared key for the whole group
    assert max_err(ik, rk) <= 1e-9
    assert (per_head.reshape(2, kv, group, 8).abs() > 1e-6).sum(2).ge(2).any()


# ----------------------------------------------------------------------------- AtP contrast


@pytest.mark.parametrize("dtype", [F64, F32])
def test_first_order_atp_fails_on_saturated_head_but_fix_is_exact(dtype):
    """Row 2 attends key 0 with logit 100; the noise moves all attention to key 1."""
    q = torch.tensor([[0.0, 0.0], [0.0, 0.0], [100.0, 0.0]], dtype=F64)[None, None]
    q_noise = q.clone()
    q_noise[0, 0, 2] = torch.tensor([0.0, 100.0])
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], dtype=F64)[None, None]
    k_noise = k.clone()
    k_noise[0, 0, 1] = torch.tensor([2.0, 0.0])  # key 1 now scores 200 in row 2
    g = torch.zeros(1, 1, 3, 3, dtype=F64)
    g[0, 0, 2, 1] = 1.0  # metric: attention of row 2 on key 1
    mask = torch.zeros(3, 3, dtype=F64).masked_fill(torch.ones(3, 3).triu(1).bool(), -1e300)

    atp_q, atp_k = first_order_atp(q, q_noise, k, k_noise, g, 1.0, mask, None)
    rq = ref_query_fix(q, q_noise, k, g, 1.0, mask, None)
    rk = ref_key_fix(q, k, k_noise, g, 1.0, mask, None)
    iq = query_fix(q.to(dtype), q_noise.to(dtype), k.to(dtype), g.to(dtype), 1.0)
    ik = key_fix(q.to(dtype), k.to(dtype), k_noise.to(dtype), g.to(dtype), 1.0)
    assert abs(rq[0, 0, 2].item() - 1.0) < 1e-12 and abs(rk[0, 0, 1].item() - 1.0) < 1e-12
    assert abs(atp_q[0, 0, 2].item()) < 1e-30 and abs(atp_k[0, 0, 1].item()) < 1e-30
    assert max_err(iq, rq) < 1e-6 and max_err(ik, rk) < 1e-6


def test_first_order_atp_is_far_off_on_random_saturated_heads():
    c = make_case(23, 2, 2, 2, 12, 12, 8, 1.0, 300.0, "causal", None)
    rq, rk = run_refs(c)
    atp_q, atp_k = first_order_atp(c["q"], c["q_noise"], c["k"], c["k_noise"], c["g"],
                                   c["scale"], c["ref_mask"], None)
    iq, ik = run_fixes(c)
    for fix, atp, ref in ((iq, atp_q, rq), (ik, atp_k, rk)):
        assert (fix - ref).norm() <= 1e-9 * ref.norm()
        assert (atp - ref).norm() >= 0.5 * ref.norm()


# ----------------------------------------------------------------------------- dtypes, scale


def test_half_precision_inputs_are_computed_in_float32():
    c = cast(make_case(29, 1, 2, 2, 10, 10, 8, 0.35, 300.0, "causal", 30.0), torch.bfloat16)
    iq, ik = run_fixes(c)
    assert iq.dtype == F32 and ik.dtype == F32
    rq, rk = run_refs(c)
    assert max_err(iq, rq) <= F32_TOL and max_err(ik, rk) <= F32_TOL


@pytest.mark.parametrize("magnitude", [1e4, 1e6])
def test_float32_extreme_scores_stay_finite(magnitude):
    c = cast(make_case(31, 2, 1, 2, 12, 12, 8, 1.0, magnitude, "causal_padding", None), F32)
    iq, ik = run_fixes(c)
    assert torch.isfinite(iq).all() and torch.isfinite(ik).all()
    assert iq.abs().max() < 4 * c["g"].abs().max() * 12  # |I| <= 2 max|g| per row


def test_key_fix_is_linear_in_memory_for_long_sequences():
    """T = S = 1024: a (T, S, S) intermediate would need 8 GB; this must run in a blink."""
    c = cast(make_case(37, 1, 1, 2, 1024, 1024, 16, 0.25, 100.0, "causal", None), F32)
    iq, ik = run_fixes(c)
    assert ik.shape == (1, 1, 1024) and iq.shape == (1, 2, 1024)
    assert torch.isfinite(iq).all() and torch.isfinite(ik).all()


def test_invalid_shapes_raise():
    q, k = torch.zeros(1, 3, 4, 2), torch.zeros(1, 2, 4, 2)
    with pytest.raises(ValueError):
        attention_scores(q, k, 1.0)
    with pytest.raises(ValueError):
        attention_scores(torch.zeros(1, 2, 3, 2), k, 1.0)  # causal needs T == S
