"""The methods a run can use, in one table: the command line's help, what ranks nodes and what ranks edges,
and which of the run's options each one takes. A new method of the command line is one row here (its
function in :mod:`atpstar.methods`, and in :mod:`atpstar.edges` if it ranks edges too)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunMethod:
    """One ``--method``: its node function (a name in :mod:`atpstar.methods`), its edge function (``module.name`` in
    :mod:`atpstar.edges`, None: it ranks nodes only), the AtP flags of an AtP variant, and the run options
    passed on to it (``seed``, ``batch_size``; ``kinds`` and ``progress`` go to every node method)."""

    name: str
    help: str
    node: str
    edge: str | None = None
    flags: dict = field(default_factory=dict)
    takes: tuple = ("batch_size",)
    edge_takes: tuple = ()

    @property
    def atp(self) -> bool:
        """An AtP variant: its per-unit estimates predict effects (the diagnostic subtracts them)."""
        return self.node == "atp"

    def node_function(self):
        from .. import methods

        return getattr(methods, self.node)

    def edge_function(self):
        from importlib import import_module

        module, name = self.edge.rsplit(".", 1)
        return getattr(import_module(f"atpstar.edges.{module}"), name)

    def options(self, edges: bool = False, **run_options) -> dict:
        """The AtP flags and those of ``run_options`` this method (its edge function) takes, None values left out."""
        takes = self.edge_takes if edges else self.takes
        return {**self.flags, **{k: v for k, v in run_options.items() if k in takes and v is not None}}


def _atp(name: str, help: str, qk_fix: bool, graddrop: bool) -> RunMethod:
    return RunMethod(name, help, "atp", "atp.atp", {"qk_fix": qk_fix, "graddrop": graddrop})


def _baseline(name: str, help: str, edge: bool = True) -> RunMethod:
    return RunMethod(name, help, name, f"baselines.{name}" if edge else None, takes=("seed", "batch_size"),
                     edge_takes=("seed", "batch_size"))


RUN_METHODS = {m.name: m for m in (
    _atp("atp*", "AtP* (AtP + QK fix + GradDrop), the default", True, True),
    _atp("atp", "plain attribution patching", False, False),
    _atp("atp+qkfix", "AtP with the QK fix only", True, False),
    _atp("atp+graddrop", "AtP with GradDrop only", False, True),
    _baseline("subsampling", "joint patches of random node subsets"),
    _baseline("blocks", "joint patches of blocks of contiguous nodes"),
    _baseline("hierarchical", "recursive blocks: layer, then head/position, then node"),
    _baseline("iterative", "patch every node on one more pair at a time, verifying the best", edge=False),
    RunMethod("acp", "exact activation patching of every node (ground truth; slow)", "acp"),
)}
"""Every ``--method``, in the order of the command line's help."""
EDGE_METHODS = tuple(name for name, m in RUN_METHODS.items() if m.edge)
"""The methods that rank edges (``--level edges|both``): edge AtP and its variants, the joint-patching baselines."""
