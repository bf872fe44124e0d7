"""The run parsed once into a typed plan before the model loads: methods are rows of one registry (the
command line's help, what ranks edges, the options each takes), the budget a Budget, the stop rule an
object (a fresh copy per verification), the edge universe a pair; no stage parses an option again."""

import inspect

import pytest

import atpstar
from atpstar.diagnostics.theta import ThetaBelow
from atpstar.run import options, registry, stages, unit_stages, edge_stages
from atpstar.run.cli.parser import build_parser
from atpstar.run.pipeline import RunConfig


def test_the_plan_holds_typed_objects():
    plan = RunConfig(methods="ATP*, blocks", level="both", verify_budget="30edges", stop="theta:target=0.5",
                     diagnose=True, edge_universe="readers:3").plan()
    assert [m.name for m in plan.methods] == ["atp*", "blocks"] and plan.primary.atp and not plan.methods[1].atp
    assert plan.budget == atpstar.Budget(nodes=30) and isinstance(plan.stop, ThetaBelow) and plan.theta
    assert plan.edge_universe == ("readers", 3) and plan.verifies
    one, two = plan.stop_rule(), plan.stop_rule()  # a rule keeps state as it checks: one copy per verification
    assert isinstance(one, ThetaBelow) and one is not two and one is not plan.stop and one.target == 0.5
    assert not RunConfig(verify_budget="0").plan().verifies


def test_one_registry_gives_the_help_the_edge_methods_and_each_method_its_options(capsys):
    assert options.METHOD_NAMES == tuple(registry.RUN_METHODS)
    assert registry.EDGE_METHODS == ("atp*", "atp", "atp+qkfix", "atp+graddrop", "subsampling", "blocks", "hierarchical")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, method in registry.RUN_METHODS.items():
        assert f"{name}: {method.help}" in text
        fn = method.node_function()
        assert set(method.takes) <= set(inspect.signature(fn).parameters), name  # it takes what the row says
        if method.edge:
            assert set(method.edge_takes) | set(method.flags) <= set(inspect.signature(method.edge_function()).parameters)
    blocks = registry.RUN_METHODS["blocks"]
    assert blocks.options(seed=3, batch_size=None) == {"seed": 3}
    assert registry.RUN_METHODS["atp+qkfix"].options(edges=True, seed=3, batch_size=8) == {"qk_fix": True,
                                                                                           "graddrop": False}


def test_no_stage_parses_an_option_string_or_guesses_keywords():
    for module in (stages, unit_stages, edge_stages):
        source = inspect.getsource(module)
        for banned in ("parse_budget", "parse_stop", "parse_edge_universe", "inspect.signature", "__name__ =="):
            assert banned not in source, (module.__name__, banned)


def test_a_bad_option_is_refused_by_the_plan_before_any_model_loads():
    with pytest.raises(ValueError, match="cannot read the verification budget 'lots'"):
        RunConfig(model="no-such/model-anywhere", verify_budget="lots").plan()
