"""Module paths from before the stage sub-packages keep working: ``import atpstar.diagnostic`` gives
:mod:`atpstar.diagnose.diagnostic` itself (the same module object), with a DeprecationWarning that
names the new place. Removed in a later release."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "model": "substrate.model", "arch": "substrate.arch", "devices": "substrate.devices",
    "attention": "substrate.attention", "capture": "substrate.capture", "patching": "substrate.patching",
    "batching": "substrate.batching", "joint": "substrate.joint",
    "qkfix": "methods.qkfix", "qkfix_linear": "methods.qkfix_linear",
    "verify_patcher": "verify.patcher", "verify_store": "verify.store",
    "ranking": "verify.ranking", "recall": "verify.recall",
    "diagnostic": "diagnose.diagnostic", "diagnosis": "diagnose.diagnosis", "bound": "diagnose.bound",
    "pipeline": "run.pipeline", "stages": "run.stages", "options": "run.options", "runfolder": "run.folder",
    "report": "run.report", "cli": "run.cli", "tasks.files": "pairsfile",
}
"""Old module (relative to ``atpstar``) -> new module; a moved package carries its sub-modules along."""


def new_place(name: str) -> str | None:
    """``atpstar.<new>`` for an old ``atpstar.<old>[.<sub>]`` name, else None."""
    if not name.startswith("atpstar."):
        return None
    old = name[len("atpstar."):]
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return "atpstar." + after + old[len(before):]
    return None


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        new = new_place(fullname)
        if new is None:
            return None
        spec = importlib.util.find_spec(new)
        if spec is None:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=spec.submodule_search_locations is not None)

    def create_module(self, spec):
        new = new_place(spec.name)
        warnings.warn(f"{spec.name} has moved to {new}; import it from there (the old path will be removed)",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # the import machinery stamped the alias spec on the real module


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
