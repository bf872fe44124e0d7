"""Building blocks of the cost-of-verified-recall study (``benchmarks/study.py``)."""
