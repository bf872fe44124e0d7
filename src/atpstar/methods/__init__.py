"""Attribution methods, one file each, one signature: ``method(model, pairs, kinds=..., metric=..., **options) -> Scores``."""

from .acp import acp
from .atp import atp

METHODS = {"acp": acp, "atp": atp}
__all__ = ["METHODS", "acp", "atp"]
