"""Command line: ``atpstar run | demo | resume | report | export | evaluate | tasks`` (``atpstar --help``).

Bad input ends with a short ``atpstar: error: ...`` message on stderr and exit status 2 (no
traceback); running out of memory with advice and status 3; Ctrl-C with how to resume and status
130 (also for SIGTERM). ``ATPSTAR_DEBUG=1`` shows the traceback of any error.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from pathlib import Path

from .parser import build_parser

EXIT_BAD_INPUT, EXIT_OOM, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 3, 1, 130
BAD_INPUT = (ValueError, TypeError, OSError, ModuleNotFoundError, FloatingPointError, IndexError, KeyError)
OOM_ADVICE = ("out of memory{where}: lower --batch-size (e.g. --batch-size 1), use --dtype bfloat16, or fewer "
              "--kinds / --pairs{resume}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(getattr(args, "quiet", False))
    from . import commands

    handler = {"run": commands.cmd_run, "demo": commands.cmd_demo, "resume": commands.cmd_resume,
               "report": commands.cmd_report, "tasks": commands.cmd_tasks,
               "export": commands.cmd_export, "evaluate": commands.cmd_evaluate}[args.command]
    folder = getattr(args, "out", None) or getattr(args, "dir", None)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill`: stop as cleanly as Ctrl-C does
    try:
        return handler(args)
    except KeyboardInterrupt:
        where = f": continue with `atpstar resume {folder}`" if folder and args.command not in ("report", "export") else ""
        print(f"\natpstar: interrupted; finished work is saved{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseException as err:  # noqa: BLE001 - every error ends in one message unless ATPSTAR_DEBUG is set
        if os.environ.get("ATPSTAR_DEBUG") or isinstance(err, SystemExit):
            raise
        return _report_error(err, folder if args.command in ("run", "demo", "resume") else None)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _report_error(err: BaseException, folder) -> int:
    if _is_oom(err):
        resume = f"; then continue with `atpstar resume {folder}`" if folder and Path(folder, "run.json").is_file() else ""
        print("atpstar: error: " + OOM_ADVICE.format(where=f" ({_first_line(err)})", resume=resume), file=sys.stderr)
        return EXIT_OOM
    if isinstance(err, BAD_INPUT):
        print(f"atpstar: error: {_message(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"atpstar: internal error: {type(err).__name__}: {_first_line(err)}\n"
          "(run again with ATPSTAR_DEBUG=1 to see the traceback, and please report it)", file=sys.stderr)
    return EXIT_INTERNAL


def _is_oom(err: BaseException) -> bool:
    import torch

    oom_type = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
    text = str(err).lower()
    return isinstance(err, (oom_type, MemoryError)) or (
        isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))


def _message(err: BaseException) -> str:
    if isinstance(err, KeyError):
        return f"missing entry {err}"
    if isinstance(err, OSError) and err.strerror and err.filename and str(err.filename) not in str(err.args[0]):
        return f"{err.strerror}: {err.filename}"
    return str(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _quiet_libraries(quiet: bool) -> None:
    """Our warnings as one line each (libraries' deprecation notices hidden: they are not the user's to fix);
    transformers' own logging off, and its progress bars too with --quiet."""
    shown = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if str(message) not in shown:
            shown.add(str(message))
            print(f"atpstar: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        if quiet:
            hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass


if __name__ == "__main__":
    sys.exit(main())
