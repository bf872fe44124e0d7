"""``benchmarks.atp_evidence``'s cost of verified recall is ``atpstar.recall_cost`` with ties in score
broken pessimistically: a node tied with others costs the whole tied group (its largest rank)."""

import numpy as np
import pandas as pd

from benchmarks import atp_evidence


def test_verified_is_the_largest_pessimistic_rank_among_the_true_top_k():
    rng = np.random.default_rng(0)
    n = 40
    for _ in range(50):
        table = pd.DataFrame({"kind": "head", "layer": rng.integers(0, 3, n), "unit": np.arange(n), "pos": 0,
                              "name": "unused", "exact_effect": -np.linspace(1, 0.1, n)})  # in true order
        table["AtP"] = np.round(rng.random(n), 1)  # many ties in score
        pessimistic = table["AtP"].rank(ascending=False, method="max").to_numpy()
        want = [int(pessimistic[:k].max()) for k in range(1, 21)]
        assert list(atp_evidence.verified(table, "AtP", 20)) == want
