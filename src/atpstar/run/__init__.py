"""One command from question to answer: the resumable pipeline and what it writes.

:mod:`.pipeline` (``RunConfig``, ``run``, ``resume``) runs the stages of :mod:`.stages` (load, pairs,
estimate, verify, diagnose, table, report) with the options checked in :mod:`.options`; each stage
writes into the run folder (:mod:`.folder`, ``load_run``); :mod:`.report` renders it as one HTML
page; :mod:`.cli` is ``atpstar ...``. The top of the stack: may import every other stage.
"""

from .folder import load_run
from .pipeline import RunConfig, resume, run

__all__ = ["RunConfig", "load_run", "resume", "run"]
