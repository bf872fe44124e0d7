"""The edge evidence's parts (``benchmarks.edges_evidence`` and ``benchmarks.edges_baselines_evidence``):
the setting (model, pairs, readers, edge universe), the cached stages (exact truth, estimates), the
timing children, the recall-cost curves and the figures."""
