"""Circuits: faithfulness of edge circuits, the MIB benchmark's curves and scores.

Public API::

    result = faithfulness(model, pairs, circuits)        # result.f (C,), result.m, result.per_pair()
    node_circuit(graph, ["L0.head.H1", "L1.mlp"]), empty_circuit(graph), full_circuit(graph)
    scores = mib(model, pairs, edge_scores)               # scores.cpr, scores.cmd, scores.signed.f
    smallest(model, pairs, edge_scores, (0.8, 0.9))       # the smallest top-n circuits with f >= 0.8, 0.9
    scorecard(model, pairs, edge_scores)                  # both of those as one JSON-ready dict
    better = verified(model, pairs, edge_scores, top=353)     # its top 353 edges re-scored exactly
    edge_scores = circuit_ig(model, pairs, ig_steps=20)       # integrated gradients of m(C) over the edges

Modules, one idea each:

- :mod:`.circuit`: circuits as (W, R) or (W, R, T) boolean masks, from names, edge sets or writers;
- :mod:`.mixture`: the forward pass where every reader reads the circuit's mixture of this run's and
  the noise run's writes;
- :mod:`.evaluate`: :func:`faithfulness`, many circuits and pairs batched;
- :mod:`.prune`: top-n circuits and MIB's pruning to the edges on an input-to-logits path;
- :mod:`.curve`: faithfulness curves at MIB's grid, CPR and CMD;
- :mod:`.smallest`: the smallest top-n circuit reaching a faithfulness threshold;
- :mod:`.scoring`: a ranking's curves, CPR, CMD and smallest circuits as one JSON-ready dict;
- :mod:`.build`: rankings built from exact patching: every edge's exact position-free effect
  (:func:`exact`), an estimate's top re-scored exactly (:func:`verified`), one ranking's sizes with
  another's signs (:func:`signed_by`);
- :mod:`.circuit_ig`: every edge's effect by integrated gradients of the mixed run's metric over the
  edges' membership, from the empty circuit to the full one.
"""

from .build import CircuitScores, exact, exact_effects, mean_magnitude, signed_by, verified
from .circuit_ig import circuit_ig
from .circuit import as_circuits, circuit_edges, empty_circuit, full_circuit, node_circuit
from .curve import MIB_GRID, Curve, MIBScores, curve, curves, mib, mib_scores
from .evaluate import Faithfulness, FaithfulnessUndefined, faithfulness
from .prune import prune, top_n
from .scoring import format_scorecard, scorecard
from .smallest import Smallest, smallest

__all__ = ["CircuitScores", "circuit_ig", "exact", "exact_effects", "mean_magnitude", "signed_by", "verified", "MIB_GRID", "Curve", "Faithfulness", "FaithfulnessUndefined", "MIBScores", "Smallest", "as_circuits",
           "circuit_edges", "curve", "curves", "empty_circuit", "faithfulness", "format_scorecard", "full_circuit",
           "mib", "mib_scores", "node_circuit", "prune", "scorecard", "smallest", "top_n"]
