"""Where the θ stop rule stops on SmolLM2 (IOI, CITY, RAND), and whether it was right to.

Reads the stop rule's measured paths (benchmarks/results/diagnostic_theta_curve.csv, written by
benchmarks/diagnostic_theta.py: real patched subsets, the AtP* ranking, a check every 10 verified nodes up
to K = 300, the verified nodes' exact effects and the true largest unverified |c| from the cached exact
truth of every attention node). For each path (task, design p and J; the default shared variance bound,
no subsets dropped) and each relative threshold R it finds the first check where ``ThetaBelow(relative=R)``
stops (θ < R × the largest verified |effect|), the θ it then states, the true largest unverified |c| (the
stop was right iff θ ≥ it), and the cost per pair so far (AtP*, the diagnostic's subsets, one forward pass
per verified node). Also the smallest R at which each path would ever have stopped.

Writes benchmarks/results/theta_stop.csv and prints the markdown table docs/diagnostic.md quotes.
No model, no patching: seconds.

Usage: python -m benchmarks.theta_stop [--relative 0.1,0.25,0.5,1]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"


def paths() -> pd.DataFrame:
    """The stop rule's default paths with the diagnostic's and AtP*'s cost per pair of each design."""
    curve = pd.read_csv(RESULTS / "diagnostic_theta_curve.csv")
    curve = curve[(curve["mode"] == "shared") & (curve["drop"] == "none")]
    costs = pd.read_csv(RESULTS / "diagnostic_theta.csv").groupby(["task", "p", "J"])[
        ["fwd_per_pair_diag", "fwd_per_pair_atp"]].first().reset_index()
    curve = curve.merge(costs, on=["task", "p", "J"])
    order = curve["task"].map({"ioi": 0, "city": 1, "rand": 2})
    return curve.assign(order=order).sort_values(["order", "p", "J", "K"]).drop(columns="order")


def stops(curve: pd.DataFrame, relatives) -> pd.DataFrame:
    rows = []
    for (task, p, J), path in curve.groupby(["task", "p", "J"], sort=False):
        rel = path["theta"] / path["largest_verified"]
        row = {"task": task, "p": p, "J": J, "checks": len(path), "K_max": int(path["K"].max()),
               "smallest_relative": round(float(rel.min()), 3),
               "covered_every_check": bool((path["theta"] >= path["true_max"]).all())}
        for r in relatives:
            hit = path[rel < r]
            if len(hit):
                first = hit.iloc[0]
                cost = first["fwd_per_pair_atp"] + first["fwd_per_pair_diag"] + first["K"]
                row.update({f"K@{r:g}": int(first["K"]), f"theta@{r:g}": round(float(first["theta"]), 3),
                            f"true_max@{r:g}": round(float(first["true_max"]), 3),
                            f"right@{r:g}": bool(first["theta"] >= first["true_max"]),
                            f"cost@{r:g}": round(float(cost), 1)})
            else:
                row.update({f"K@{r:g}": None})
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, relatives) -> str:
    head = ["task", "design", "smallest R it could stop at", *(f"R = {r:g}: stops at K (θ, true max, fwd-eq/pair)"
                                                             for r in relatives)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.to_dict("records"):
        cells = [row["task"].upper(), f"p = {row['p']:g}, J = {row['J']}", f"{row['smallest_relative']:.2f}"]
        for r in relatives:
            k = row.get(f"K@{r:g}")
            if k is None or k != k:
                cells.append("never (K ≤ 300)")
            else:
                cells.append(f"{int(k)} ({row[f'theta@{r:g}']:.2f}, {row[f'true_max@{r:g}']:.2f}, "
                             f"{row[f'cost@{r:g}']:.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relative", default="0.1,0.25,0.5,1", help="relative thresholds R, comma-separated")
    args = parser.parse_args(argv)
    relatives = [float(r) for r in args.relative.split(",")]
    table = stops(paths(), relatives)
    table.to_csv(RESULTS / "theta_stop.csv", index=False)
    print(markdown(table, relatives))
    return table


if __name__ == "__main__":
    main()
