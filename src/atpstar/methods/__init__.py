"""Attribution methods, one file each, one signature: ``method(model, pairs, kinds=..., metric=..., **options) -> Scores``."""

from .acp import acp

METHODS = {"acp": acp}
__all__ = ["METHODS", "acp"]
