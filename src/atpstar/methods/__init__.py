"""Attribution methods, one file each, one signature: ``method(model, pairs, kinds=..., metric=..., **options) -> Scores``."""

from .acp import acp
from .atp import atp
from .blocks import blocks
from .hierarchical import hierarchical
from .iterative import iterative
from .reference import oracle, random_order
from .subsampling import subsampling

METHODS = {"acp": acp, "atp": atp, "subsampling": subsampling, "blocks": blocks, "hierarchical": hierarchical,
           "iterative": iterative, "random": random_order, "oracle": oracle}
__all__ = ["METHODS", "acp", "atp", "blocks", "hierarchical", "iterative", "oracle", "random_order", "subsampling"]
