"""The false-negative diagnostic: its statistics on simulated additive effects (many seeds, exhaustive
checks of the constants), and on models where every true effect is known (a float64 model that is
linear after the nodes, so effects add up exactly; tiny random models with exhaustive patching; a
saturated-attention model where plain AtP misses the largest node).

Calibration tolerance: a bound promising failure probability ≤ δ, checked over n independent seeds,
may fail k times with k ~ Binomial(n, ≤ δ); the tests allow k ≤ nδ + 3·sqrt(nδ(1 − δ)) (a
false alarm below 0.2% for a correct bound)."""

import json
import math

import pytest
import torch
from conftest import random_pairs, tiny_model
from test_atp import one_layer_attention_model
from test_substrate import linear_after_node

import atpstar
from atpstar import Budget, NodeKind, NodeSet
from atpstar.diagnostics.bound import (SubsetSums, bernoulli_proxy, kurtosis_factor, min_samples, multiplier, node_stats,
                                    rebound_stats, spent_delta)
from atpstar.diagnostics.diagnostic import diagnose, memberships
from atpstar.diagnostics.theta import ThetaBelow


def allowed_failures(n: int, delta: float) -> float:
    return n * delta + 3 * math.sqrt(n * delta * (1 - delta))


def simulate(c, p, samples, seed, estimate=None, bound="subgaussian"):
    """The pure statistics on exactly additive effects ``c``: y_j = Σ_{n∈S_j} (c − estimate)(n)."""
    members = memberships(len(c), p, seed, 0, samples)
    resid = c if estimate is None else c - estimate
    sums = SubsetSums(len(c))
    sums.add(members, members.double() @ resid)
    return node_stats(sums, p, estimate, bound)


# --- the constants, checked exhaustively ---------------------------------------------------------
@pytest.mark.parametrize("p", [0.01, 0.05, 0.2, 0.5, 0.8])
def test_bernoulli_proxy_bounds_the_mgf_and_is_tight(p):
    lam = torch.linspace(-60, 60, 24001, dtype=torch.float64)
    log_mgf = torch.log((1 - p) * torch.exp(-lam * p) + p * torch.exp(lam * (1 - p)))
    ratio = log_mgf[lam != 0] / (lam[lam != 0] ** 2 * bernoulli_proxy(p) / 2)
    assert ratio.max() <= 1 + 1e-9
    assert ratio.max() >= 0.99  # the optimal constant: no smaller one works


@pytest.mark.parametrize("p", [0.02, 0.3, 0.5])
def test_kurtosis_factor_bounds_the_fourth_moment_exactly(p):
    """E[Z²] ≤ κ E[Z]² for Z = (y − y')²/2, y = Σ X_m r_m, by enumerating every (X, X') of 3 nodes."""
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for r in [torch.tensor([1.0, 0.0, 0.0]), torch.ones(3), torch.randn(3, generator=gen, dtype=torch.float64)]:
        r = r.double()
        states = torch.tensor([[(i >> b) & 1 for b in range(6)] for i in range(64)], dtype=torch.float64)
        prob = torch.where(states == 1, p, 1 - p).prod(1).double()
        z = ((states[:, :3] - states[:, 3:]) @ r) ** 2 / 2
        ez, ez2 = float(prob @ z), float(prob @ z**2)
        assert ez == pytest.approx(p * (1 - p) * float(r @ r))  # E[Z] = Var(y)
        worst = max(worst, ez2 / ez**2)
    assert worst <= kurtosis_factor(p) + 1e-9
    assert worst >= 0.99 * min(kurtosis_factor(p), 1 / (2 * p * (1 - p)))  # a single node attains 1/(2p(1−p))


def test_multiplier_is_finite_from_min_samples_and_shrinks_with_samples():
    p, delta = 0.05, 0.05
    j0 = min_samples(p, delta)
    assert math.isinf(multiplier(delta, 100, j0 - 2, p))
    assert math.isfinite(multiplier(delta, 100, j0, p))
    values = [multiplier(delta, 100, j, p) for j in (j0, 2 * j0, 8 * j0, 10**6)]
    assert values == sorted(values, reverse=True)
    assert multiplier(delta, 100, 1000, 0.5, "normal") == pytest.approx(3.4808, abs=1e-3)  # Φ⁻¹(1 − 0.05/200)
    assert values[-1] > multiplier(delta, 100, 10**6, p, "normal")


# --- the statistics on simulated additive effects -------------------------------------------------
def test_estimator_is_unbiased_and_its_standard_error_calibrated():
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(60, generator=gen, dtype=torch.float64) * torch.rand(60, generator=gen, dtype=torch.float64)
    z = torch.cat([(lambda s: (s.effect - c) / s.se)(simulate(c, 0.1, 300, seed)) for seed in range(200)])
    assert abs(float(z.mean())) < 0.05
    assert 0.93 < float(z.std()) < 1.07  # se is right: a 10% error in it would show


PROFILES = {
    "one dominant": lambda g: torch.cat([torch.tensor([5.0]), 0.1 * torch.randn(79, generator=g)]),
    "spread": lambda g: torch.randn(80, generator=g),
    "sparse": lambda g: torch.where(torch.rand(80, generator=g) < 0.1, 3 * torch.randn(80, generator=g), torch.zeros(80)),
}


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("bound,p,samples", [("subgaussian", 0.05, 600), ("subgaussian", 0.3, 300), ("normal", 0.05, 300),
                                             ("capped", 0.05, 600), ("capped", 0.3, 100)])
def test_simultaneous_coverage_on_simulated_additive_effects(profile, bound, p, samples):
    """Over 200 seeds, every node is under its upper bound at once in at least a 1 − δ share."""
    c = PROFILES[profile](torch.Generator().manual_seed(2)).double()
    delta, n = 0.2, 200
    fails = theta_fails = 0
    for seed in range(n):
        stats = simulate(c, p, samples, seed, bound=bound)
        fails += bool((c.abs() > stats.upper(delta)).any())
        theta_fails += stats.theta(delta) < float(c.abs().max())
    assert fails <= allowed_failures(n, delta)
    assert theta_fails <= fails


def energy_only(stats, delta, slack=True):
    """θ of the residual-energy bound alone, max |ê| + sqrt(B); ``slack=False`` is the deliberately
    broken version that plugs in s² / (p(1 − p)) without its upper confidence bound."""
    energy = stats.energy(delta) if slack else stats.variance / (stats.p * (1 - stats.p))
    return float(stats.estimate.abs().max()) + math.sqrt(energy)


@pytest.mark.parametrize("profile", list(PROFILES))
def test_energy_bound_covers_and_its_broken_version_does_not(profile):
    """The residual-energy bound alone (max |ê| + sqrt(B), on the δ/2 variance event) covers max |c| at
    the promised rate; without the upper confidence bound on the variance it fails far too often when
    one node dominates (the sample variance sees it in Binomial(J, p) subsets)."""
    c = PROFILES[profile](torch.Generator().manual_seed(2)).double()
    est = 0.5 * c * (torch.rand(80, generator=torch.Generator().manual_seed(5), dtype=torch.float64) < 0.5)
    delta, n, p, samples = 0.2, 200, 0.05, 200
    fails = broken = 0
    for seed in range(n):
        stats = simulate(c, p, samples, seed, estimate=est, bound="capped")
        fails += energy_only(stats, delta) < float(c.abs().max())
        broken += energy_only(stats, delta, slack=False) < float(c.abs().max())
    assert fails <= allowed_failures(n, delta)
    if profile == "one dominant":
        assert broken > allowed_failures(n, delta)


def test_capped_is_never_wider_than_subgaussian_and_bounds_unobserved_nodes():
    c = torch.zeros(20000, dtype=torch.float64)
    c[:80] = PROFILES["sparse"](torch.Generator().manual_seed(6)).double()
    sub, cap = simulate(c, 0.05, 160, 0), simulate(c, 0.05, 160, 0, bound="capped")
    assert bool((cap.upper(0.05) <= sub.upper(0.05) + 1e-12).all())
    assert sub.unobserved > 0 and math.isinf(sub.theta(0.05)) and math.isfinite(cap.theta(0.05))
    for delta in (0.05, 0.1, 0.3):
        assert cap.prob_exceeds(cap.theta(delta)) == pytest.approx(delta, rel=1e-4)


@pytest.mark.parametrize("bound,drop", [("subgaussian", False), ("capped", False), ("capped", True)])
def test_rebound_from_the_same_subsets_covers_at_every_check(bound, drop):
    """Subsets drawn once; the nodes are then verified in a fixed order (here: by |c|, the worst case for a
    bound that had to cover the large ones) and re-bounded at checks i = 1..4 with δ/(i(i+1)) from the SAME
    subsets: over 200 seeds, the remaining nodes are all under their bounds at every check at once at the
    promised rate, and θ shrinks as the large nodes are verified. ``drop``: the subsets holding one of the
    two largest verified nodes are left out as well (the stop rule's ``drop``)."""
    c = PROFILES["sparse"](torch.Generator().manual_seed(7)).double()
    order = torch.argsort(c.abs(), descending=True)
    p, samples, delta, n = 0.1, 300, 0.2, 200
    fails, shrink = 0, 0
    for seed in range(n):
        members = memberships(len(c), p, seed, 0, samples)
        subset_mean = members.double() @ c
        bad, thetas = False, []
        for i, k in enumerate((0, 2, 5, 10), start=1):
            keep = torch.ones(len(c), dtype=torch.bool)
            keep[order[:k]] = False
            predict = torch.where(keep, 0.0, c)  # verified nodes: their exact effect
            avoid = None
            if drop:
                avoid = torch.zeros(len(c), dtype=torch.bool)
                avoid[order[:min(k, 2)]] = True
            stats = rebound_stats(subset_mean, predict, keep, p, seed, estimate=torch.zeros(len(c), dtype=torch.float64),
                                  bound=bound, avoid=avoid)
            level = spent_delta(delta, i)
            bad |= bool((c[keep].abs() > stats.upper(level)).any())
            thetas.append(stats.theta(level))
        fails += bad
        shrink += thetas[-1] < 0.5 * thetas[0]
    assert fails <= allowed_failures(n, delta)
    assert shrink >= 0.9 * n
    assert sum(spent_delta(1.0, i) for i in range(1, 10**5)) < 1


def test_subtracting_exact_estimates_leaves_no_variance():
    c = torch.randn(50, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    stats = simulate(c, 0.2, 200, 0, estimate=c.clone())
    assert stats.variance < 1e-25
    assert stats.theta(0.05) == pytest.approx(float(c.abs().max()), rel=1e-9)


def test_prob_exceeds_inverts_theta():
    c = PROFILES["sparse"](torch.Generator().manual_seed(4)).double()
    stats = simulate(c, 0.2, 500, 0)
    for delta in (0.01, 0.05, 0.3):
        assert stats.prob_exceeds(stats.theta(delta)) == pytest.approx(delta, rel=1e-6)
    assert stats.prob_exceeds(float(stats.effect.abs().max()) * 0.99) == 1.0  # an estimate already exceeds it
    assert stats.prob_exceeds(10 * stats.theta(0.05)) < 1e-6


def test_sums_scale_to_a_million_nodes_in_flat_memory():
    n = 1_000_000
    sums = SubsetSums(n)
    for first in (0, 8):
        members = memberships(n, 0.01, 0, first, 8)
        sums.add(members, torch.arange(first, first + 8, dtype=torch.float64))
    assert int(sums.count.sum()) == pytest.approx(16 * n * 0.01, rel=0.01)
    assert sums.samples == 16


# --- a model whose effects add up exactly ---------------------------------------------------------
def planted_linear(scale: float = 1.0, unit: int = 7):
    """Every last-layer neuron (all positions) of the float64 linear-after-node model; neuron ``unit`` at
    the last position made ``scale`` times larger. Returns model, pairs, nodes, exact effects (Scores)."""
    model, pairs, _, _ = linear_after_node(NodeKind.NEURON)
    last = model.n_layers - 1
    with torch.no_grad():
        model.layers[last].mlp.down_proj.weight[:, unit] *= scale
    nodes = NodeSet.every(model, "neuron", pairs.max_len)
    nodes = nodes.take(nodes.layer == last)
    return model, pairs, nodes, atpstar.acp(model, pairs, nodes=nodes, progress=False).to_frame()


def test_subset_effects_are_the_sums_of_exact_effects():
    model, pairs, nodes, truth = planted_linear()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=3), progress=False)
    d = diagnose(model, pairs, v, samples=200, p=0.1, seed=5, progress=False)
    effect = truth.set_index("name")["effect"]
    c = torch.tensor(effect.loc[[n.name for n in d.nodes.to_nodes()]].to_numpy())
    members = memberships(len(d.nodes), 0.1, 5, 0, 200)
    assert torch.allclose(d.subset_effects[:, 0], members.double() @ c, atol=1e-9)
    assert d.n_verified == 3 and d.n_static + len(d.nodes) == len(nodes) - 3
    # 2 captures + one partial forward per subset: last layer only (1/3 of the layers), late positions
    assert 2 + 200 / 21 <= d.cost.per_pair() <= 2 + 200 / 3


def test_planted_node_is_the_first_suspect_and_pushes_theta_above_its_effect():
    model, pairs, _, truth = planted_linear(scale=80.0)
    planted = "L2.neuron.N7@6"
    c_planted = abs(float(truth.set_index("name").loc[planted, "effect"]))
    assert c_planted > 5 * truth["score"].iloc[1]  # really the largest by far
    order = [n for n in truth["name"] if n != planted] + [planted]  # a ranking that puts it last
    v = atpstar.verify(model, pairs, order, budget=Budget(nodes=5), progress=False)
    d = diagnose(model, pairs, v, samples=400, p=0.1, progress=False)
    assert d.suspects["name"].iloc[0] == planted
    assert d.theta >= c_planted
    assert d.suspects["z"].abs().iloc[0] > 5
    assert d.prob_exceeds(0.5 * c_planted) == 1.0  # a node that large cannot be excluded
    verified = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=5), progress=False)
    rest = diagnose(model, pairs, verified, samples=400, p=0.1, progress=False)
    assert truth["score"].iloc[5] <= rest.theta < 0.5 * c_planted  # nothing large left: θ is small
    assert rest.prob_exceeds(c_planted) < 1e-3


def test_theta_shrinks_as_samples_grow():
    model, pairs, _, truth = planted_linear()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=5), progress=False)
    thetas = [diagnose(model, pairs, v, samples=j, p=0.1, progress=False).theta for j in (200, 800, 3200)]
    assert thetas[0] > thetas[1] > thetas[2] >= truth["score"].iloc[5]
    assert thetas[2] < 0.6 * thetas[0]


def test_exact_estimates_make_the_bound_tight():
    """AtP is exact when the model is linear after the nodes: the residual has no variance, θ = max |c|."""
    model, pairs, nodes, truth = planted_linear()
    estimates = atpstar.atp(model, pairs, kinds="neuron", qk_fix=False, graddrop=False, progress=False)
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=5), progress=False)
    d = diagnose(model, pairs, v, estimates=estimates, samples=200, p=0.1, progress=False)
    assert d.stats.variance < 1e-20
    assert d.theta == pytest.approx(float(truth["score"].iloc[5]), rel=1e-6)
    assert d.estimates == estimates.method


def test_calibration_on_the_linear_model_over_seeds():
    """100 seeds of real joint patching: θ covers the largest unverified effect at the promised rate,
    and the standard errors are calibrated (z-scores of the truth have unit spread)."""
    model, pairs, _, truth = planted_linear()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=2), progress=False)
    effect = truth.set_index("name")["effect"]
    delta, n, fails, z = 0.1, 100, 0, []
    for seed in range(n):
        d = diagnose(model, pairs, v, samples=300, p=0.2, seed=seed, delta=delta, progress=False)
        table = d.table()
        c = torch.tensor(effect.loc[table["name"]].to_numpy())
        fails += bool((c.abs() > torch.tensor(table["upper"].to_numpy())).any())
        z.append((torch.tensor(table["effect"].to_numpy()) - c) / torch.tensor(table["se"].to_numpy()))
    assert fails <= allowed_failures(n, delta)
    z = torch.cat(z)
    assert abs(float(z.mean())) < 0.05 and 0.9 < float(z.std()) < 1.1


# --- real (non-additive) models with exhaustive patching -----------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_calibration_on_a_tiny_model_with_exhaustive_patching(arch):
    """Top 100 of a tiny random model verified; the bound, from small subsets (p = 0.05, ~100 nodes,
    near-additive), covers the true largest unverified effect on every seed allowed by δ. Pairs of
    two lengths: nodes at early positions exist in one pair only."""
    model, pairs = tiny_model(arch), random_pairs(lengths=(7, 9))
    truth = atpstar.acp(model, pairs, kinds="all", progress=False).to_frame()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=100), progress=False)
    largest = float(truth["score"].iloc[100])
    delta, n = 0.1, 12
    thetas = [diagnose(model, pairs, v, samples=400, p=0.05, seed=s, delta=delta, progress=False).theta
              for s in range(n)]
    assert sum(t < largest for t in thetas) <= allowed_failures(n, delta)
    assert max(thetas) < 40 * largest  # finite and not absurd


def test_diagnostic_catches_what_plain_atp_misses():
    """One saturated attention layer: plain AtP scores the largest key node ~0 (the softmax is flat to
    first order), so verifying AtP's top nodes leaves it out; the diagnostic flags it first."""
    model = one_layer_attention_model(12.0)
    base = random_pairs(lengths=(8,), seed=3)
    noise = [x.clone() for x in base.noise]
    for c, x in zip(base.clean, noise):
        x[-1] = (c[-1] + 1) % 97
    pairs = atpstar.PromptPairs(base.clean, tuple(noise), base.answer, base.distractor)
    truth = atpstar.acp(model, pairs, kinds="attn", progress=False).to_frame().set_index("name")
    plain = atpstar.atp(model, pairs, kinds="attn", qk_fix=False, graddrop=False, progress=False)
    v = atpstar.verify(model, pairs, plain, budget=Budget(nodes=8), progress=False)
    left = truth.drop(index=v.to_frame()["name"])
    missed = left["score"].idxmax()
    assert left["score"].max() >= truth["score"].max() * 0.99  # AtP missed the very largest node
    d = diagnose(model, pairs, v, estimates=plain, samples=800, p=0.05, progress=False)
    assert d.suspects["name"].iloc[0] == missed
    assert d.theta >= left["score"].max()


# --- the pipeline: checkpoints, stop rule, results ------------------------------------------------
def test_checkpoint_resumes_and_matches_a_fresh_run(tmp_path):
    model, pairs, _, truth = planted_linear()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=5), progress=False)
    path = tmp_path / "diag.ckpt"
    first = diagnose(model, pairs, v, samples=300, p=0.1, checkpoint=path, progress=False)
    again = diagnose(model, pairs, v, samples=600, p=0.1, checkpoint=path, progress=False)
    fresh = diagnose(model, pairs, v, samples=600, p=0.1, progress=False)
    assert first.resumed == 0 and again.resumed == 300
    assert again.cost.forward < 0.7 * fresh.cost.forward  # only the missing subsets were patched
    assert again.theta == pytest.approx(fresh.theta, rel=1e-12)
    with pytest.raises(ValueError, match="different diagnostic"):
        diagnose(model, pairs, v, samples=600, p=0.1, seed=1, checkpoint=path, progress=False)


def test_theta_below_stops_verification():
    model, pairs, _, truth = planted_linear(scale=25.0)
    target = 0.5 * float(truth["score"].iloc[0])
    rule = ThetaBelow(target, samples=300, p=0.1)
    v = atpstar.verify(model, pairs, truth["name"].tolist(), stop=rule, chunk=1, progress=False)
    assert v.stopped.startswith("theta below target")
    assert rule.history[-1][1] < target <= rule.history[0][1]
    assert 1 <= len(v.nodes) < 40
    assert rule.cost.forward > 0


def test_theta_below_patches_once_and_rebounds():
    """One diagnostic's subsets serve every check: the rule's cost is that of one diagnostic, however many
    checks; a relative threshold works too; a rebound agrees with the truth."""
    model, pairs, _, truth = planted_linear(scale=25.0)
    rule = ThetaBelow(relative=0.5, samples=300, p=0.1, every=2)
    v = atpstar.verify(model, pairs, truth["name"].tolist(), stop=rule, chunk=1, progress=False)
    assert v.stopped.startswith("theta below target") and len(rule.history) >= 2
    assert rule.base.cost.forward == rule.cost.forward and rule.draws == 1  # each check re-bounds the first subsets
    assert rule.last.rebounds == len(rule.history) - 1  # one re-bound per check after the first, carried forward
    assert len({h[2] for h in rule.history}) == 1  # no new patch after the first check
    left = truth.set_index("name").drop(index=v.to_frame()["name"])
    assert rule.last.theta >= left["score"].max()
    with pytest.raises(ValueError, match="target= .* or relative="):
        ThetaBelow()


def test_statement_and_dict():
    model, pairs, _, truth = planted_linear()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=5), progress=False)
    d = diagnose(model, pairs, v, samples=300, p=0.1, progress=False)
    text = d.statement
    for fragment in ("300 random subsets", "p = 0.1", f"{d.theta:.4g}", "add up", "Interactions", "0.95"):
        assert fragment in text
    out = json.loads(json.dumps(d.to_dict()))
    assert out["theta"] == pytest.approx(d.theta) and out["suspects"][0]["name"] == d.suspects["name"].iloc[0]


# --- bad input ------------------------------------------------------------------------------------
def test_bad_input_is_refused():
    model, pairs, _, truth = planted_linear()
    names = truth["name"].tolist()
    v = atpstar.verify(model, pairs, names, budget=Budget(nodes=5), progress=False)
    for kwargs, match in [({"p": 0.0}, "p must be"), ({"p": 1.5}, "p must be"), ({"samples": 1}, "samples must be"),
                          ({"delta": 1.0}, "delta must be"), ({"samples": 50, "p": 0.1}, "too few"),
                          ({"bound": "magic"}, "unknown bound")]:
        with pytest.raises(ValueError, match=match):
            diagnose(model, pairs, v, progress=False, **kwargs)
    everything = atpstar.verify(model, pairs, names, progress=False)
    with pytest.raises(ValueError, match="no unverified node"):
        diagnose(model, pairs, everything, progress=False)
    other = random_pairs(lengths=(7,), seed=9)
    with pytest.raises(ValueError, match="different run"):
        diagnose(model, other, v, progress=False)
    with pytest.raises(TypeError, match="estimates must be a Scores"):
        diagnose(model, pairs, v, estimates=[1.0], progress=False)


def test_nan_metric_names_the_subset_size():
    model, pairs, _, truth = planted_linear()
    v = atpstar.verify(model, pairs, truth["name"].tolist(), budget=Budget(nodes=5), progress=False)
    calls = []

    def fragile(logits, pairs):  # finite on the clean run, NaN once anything is patched
        calls.append(1)
        value = logits[:, int(pairs.answer[0])] - logits[:, int(pairs.distractor[0])]
        return value if len(calls) == 1 else value * float("nan")

    with pytest.raises(FloatingPointError, match=r"subset \d+ of 300 \(\d+ unverified nodes"):
        diagnose(model, pairs, truth["name"].tolist()[:5], kinds="neuron", samples=300, p=0.1, metric=fragile,
                 progress=False)


def test_verify_can_end_with_the_diagnostic():
    model, pairs, _, _ = planted_linear()
    estimates = atpstar.atp(model, pairs, kinds="neuron", qk_fix=False, graddrop=False, progress=False)
    v = atpstar.verify(model, pairs, estimates, budget=Budget(nodes=5), diagnose={"samples": 200, "p": 0.1},
                       progress=False)
    direct = diagnose(model, pairs, v, estimates=estimates, samples=200, p=0.1, progress=False)
    assert v.diagnosis.estimates == estimates.method and v.diagnosis.n_verified == 5
    assert v.diagnosis.theta == pytest.approx(direct.theta, rel=1e-12)
