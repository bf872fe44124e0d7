"""The run's diagnostic design: --diagnose and --stop theta, on nodes and on edges, take theirs from
atpstar.diagnostics.design for the number of units the diagnostic bounds (the user's --samples / --p
honoured), record it in run.json with why and the θ it expects, and warn when θ rules out nothing that
was verified (nodes as edges). Tiny random model, real estimators, verification and diagnostic."""

import json
import warnings

import pytest
from tinydir import tiny_dir  # noqa: F401 - fixture

from atpstar.diagnostics import design
from atpstar.diagnostics.usefulness import theta_warning
from atpstar.run.cli import main
from atpstar.run.design import first_moving
from atpstar.run.pipeline import RunConfig, run


def _run(tiny_dir, out, **options):  # noqa: F811
    config = RunConfig(model=tiny_dir, pairs=2, kinds="head", **options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = run(config, out, progress=False)
    return folder, [str(w.message) for w in caught if "diagnostic's θ" in str(w.message)]


def _same(recorded: dict, plan) -> None:
    assert (recorded["samples"], recorded["p"], recorded["bound"]) == (plan.samples, plan.p, plan.bound) != (None,) * 3
    assert recorded["cost_per_pair"] == plan.cost_per_pair
    assert recorded["theta_per_residual"] == pytest.approx(plan.theta_per_residual)


def test_diagnose_takes_the_planners_design_for_the_units_left(tiny_dir, tmp_path):  # noqa: F811
    folder, _ = _run(tiny_dir, tmp_path / "r", verify_budget="4nodes", diagnose=True)
    d, stage = folder.diagnosis, folder.meta["stages"]["diagnose"]
    recorded = stage["design"]
    # the count planned for is exactly what the diagnostic bounded: the unverified nodes that move
    assert recorded["n_units"] == d["unverified"] - d["static"] == 116
    _same(recorded, design(116, delta=0.05))
    assert (d["samples"], d["p"], d["bound"]) == (300, 0.5, "capped")  # the planner's, not the old 1000 at 0.05
    assert recorded["why"].startswith("chosen by the planner for --diagnose")
    # after the diagnostic: the residual energy the subsets measured and the θ the plan expects at it
    again = design(116, samples=300, p=0.5, residual=recorded["residual"])
    assert recorded["expected_theta"] == pytest.approx(again.expected_theta) and recorded["residual"] > 0
    assert f"expect θ ≈ {again.expected_theta:.3g}" in recorded["explanation"]
    assert json.loads((folder.path / "stages" / "diagnosis.json").read_text())["design"] == recorded
    page = (folder.path / "report.html").read_text()
    assert "Design: chosen by the planner for --diagnose" in page


def test_stop_theta_plans_for_every_ranked_node_and_its_first_check(tiny_dir, tmp_path):  # noqa: F811
    folder, _ = _run(tiny_dir, tmp_path / "r", verify_budget="20nodes", stop="theta:target=0.01")
    recorded = folder.meta["stages"]["diagnose"]["design"]
    assert recorded["n_units"] == 136 - 16 and recorded["stop_rule"]  # every ranked head node that moves
    _same(recorded, design(120, stop=True))
    assert (folder.diagnosis["samples"], folder.diagnosis["p"]) == (recorded["samples"], recorded["p"])
    assert recorded["why"].startswith("chosen by the planner for --stop theta's first check")


def test_explicit_samples_and_p_are_honoured(tiny_dir, tmp_path, capsys):  # noqa: F811
    code = main(["run", "--model", tiny_dir, "--pairs", "2", "--kinds", "head", "--verify-budget", "4nodes",
                 "--diagnose", "--samples", "60", "--p", "0.3", "--out", str(tmp_path / "r"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "diagnostic design: --samples 60 and --p 0.3 as given for --diagnose" in out
    recorded = json.loads((tmp_path / "r" / "run.json").read_text())["stages"]["diagnose"]["design"]
    _same(recorded, design(116, samples=60, p=0.3))
    assert recorded["samples"] == 60 and recorded["p"] == 0.3
    # one of them: the other is the planner's for it
    folder, _ = _run(tiny_dir, tmp_path / "s", verify_budget="4nodes", diagnose=True, samples=100)
    _same(folder.meta["stages"]["diagnose"]["design"], design(116, samples=100))


def test_a_design_that_cannot_bound_the_units_is_refused_naming_the_option(tiny_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--samples 3 and --p 0.01 cannot bound 116 unverified nodes: raise --samples"):
        _run(tiny_dir, tmp_path / "r", verify_budget="4nodes", diagnose=True, samples=3, p=0.01)


def test_edge_runs_take_their_design_from_the_same_planner(tiny_dir, tmp_path):  # noqa: F811
    folder, _ = _run(tiny_dir, tmp_path / "r", level="edges", verify_budget="10edges", diagnose=True)
    d, recorded = folder.edge_diagnosis, folder.meta["stages"]["diagnose:edges"]["design"]
    # the ranked edges at positions that can move, less the verified ones: every edge the diagnostic bounds
    # (and the embedding's edges at positions whose token agrees, which it finds static too)
    assert d["unverified"] - d["static"] <= recorded["n_units"] <= d["unverified"]
    _same(recorded, design(recorded["n_units"], unit="edge"))
    assert (d["samples"], d["p"], d["bound"]) == (recorded["samples"], recorded["p"], "capped")
    assert recorded["cost_per_pair"] == 4 + recorded["samples"]  # edges pay four capture passes
    assert "at the default budget of 304 forward-pass equivalents per pair" in recorded["why"]


def test_a_node_theta_that_rules_out_nothing_verified_warns(tiny_dir, tmp_path):  # noqa: F811
    """θ at least the largest verified |effect|: a warning (run.json, diagnosis.json, the report, the
    printed summary), the edge diagnostic's words with node remedies; θ below it: none."""
    useless, warned = _run(tiny_dir, tmp_path / "u", verify_budget="4nodes", diagnose=True, samples=50, p=0.5)
    theta, largest = useless.diagnosis["theta"], useless.verified["effect"].abs().max()
    assert theta >= largest and warned == [theta_warning(theta, useless.verified, unit="node")]
    assert warned[0].startswith(f"the node diagnostic's θ = {theta:.4g} is not below the largest verified |effect| "
                                f"({largest:.4g}): it rules out no node as large as those verified; raise --samples")
    assert useless.meta["stages"]["diagnose"]["warning"] == useless.diagnosis["warning"] == warned[0]
    assert "Warning: the node diagnostic" in (useless.path / "report.html").read_text()
    useful, none = _run(tiny_dir, tmp_path / "f", verify_budget="4nodes", diagnose=True)
    assert useful.diagnosis["theta"] < useful.verified["effect"].abs().max()
    assert none == [] and useful.diagnosis["warning"] is None


def test_first_moving_is_where_some_pair_first_differs():
    import torch

    from atpstar import PromptPairs

    t = lambda *ids: torch.tensor(ids)  # noqa: E731
    pairs = PromptPairs((t(1, 2, 3, 4), t(5, 6, 7)), (t(1, 2, 9, 4), t(5, 8, 7)), torch.tensor([1, 2]),
                        torch.tensor([3, 4]))
    assert first_moving(pairs) == 2  # pair 0 differs at 2; pair 1 (right-aligned from 1) at 1 + 1
    same = PromptPairs((t(1, 2),), (t(1, 2),), torch.tensor([1]), torch.tensor([3]))
    assert first_moving(same) == 2  # nothing ever moves


@pytest.mark.parametrize("command", ["run", "demo"])
def test_the_help_says_the_planner_chooses_and_quotes_its_constants(command, capsys):
    from atpstar.diagnostics.defaults import BUDGET
    from atpstar.diagnostics.planner import CAPTURE, MAX_SUBSET
    from atpstar.run.cli.parser import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    if command == "demo":  # the demo pays for more subsets, so that its θ can rule out what verification found
        from atpstar.run.cli.parser import DEMO

        assert f"default: {DEMO['samples']}, so that θ can rule out nodes as large as those verified" in text
    else:
        assert f"default: the planner's, {BUDGET - CAPTURE:g}, for the default budget of {BUDGET:g} forward-pass" in text
    assert f"with at most {MAX_SUBSET} units per subset" in text and "SPEC" not in text

