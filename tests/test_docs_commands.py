"""Every command and code example in the README and docs/ runs here, so one that stops working fails CI.

What is found: every fenced code block of README.md and docs/*.md, plus the ``atpstar ...`` commands
written inline in backquotes (those without a placeholder such as ``DIR``).

- ``atpstar`` commands run in-process (``atpstar.run.cli.main``) on a tiny random Llama saved as a
  directory (tests/tinydir.py), in the order the documents give them, in one folder (so ``resume``,
  ``report`` and ``export`` find the run a command before made). Quick variant, the same for all:
  ``--model`` the tiny one, at most 2 pairs, ``--samples 400`` unless given, ``--quiet``.
- Python blocks run with ``exec``, a document's blocks in order in one namespace, with
  ``atpstar.load_model`` returning the tiny model whatever it is asked for (docs/scaling.md's
  Llama-2-7b on a GPU, which needs the hub and a GPU, included: the code around it runs on the CPU). A block that uses names it
  does not define (``model``, ``pairs``, ``my_edges``...) gets them from :data:`PRELUDE`; the changes
  that make a block quick or fit the tiny model are listed in :data:`QUICK`, each checked to still be
  found in its document.
- Other shell commands (``make``, benchmark scripts, ``torchrun``) are listed one by one in
  :data:`OTHER`, with what is run for each here: a dry run of a make target, the script's own argument
  parser on the documented arguments (the work itself runs in the named test, or is the hours-long
  measurement), or a skip with its reason. A command not listed fails the test, so nothing is dropped
  silently.
- A block that is not code (output, a folder tree, a table, a data file) is checked to hold no
  command; the JSON and CSV pair files of docs/tasks.md become the files their Python example reads.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from tinydir import tiny_dir  # noqa: F401 - fixture

import atpstar
from atpstar.run.cli import main
from atpstar.run.cli.parser import EXAMPLES

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_WORDS = ("atpstar", "python", "python3", "make", "torchrun", "pip", "OMP_NUM_THREADS=", "PYTHONPATH=",
               "HF_HUB_OFFLINE=")
"""How a line of shell starts: a block holding such a line must be a ``bash`` block."""


@dataclass
class Block:
    doc: str
    lang: str
    text: str
    line: int


def blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [Block(path.name, m[1], textwrap.dedent(m[2]), text[:m.start()].count("\n") + 1)
            for m in re.finditer(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", text, re.S | re.M)]


ALL = [b for path in DOCUMENTS for b in blocks(path)]


def shell_lines(block: Block) -> list[str]:
    """A bash block's command lines: comments dropped, ``\\`` continuations joined."""
    out, text = [], re.sub(r"\\\n\s*", " ", block.text)
    for line in text.splitlines():
        line = re.split(r"\s+#", " " + line, maxsplit=1)[0].strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def inline_commands(text: str) -> list[str]:
    """The ``atpstar ...`` commands written inline in backquotes, unless they hold a placeholder
    (``atpstar resume DIR``) or are one word long (``atpstar demo`` is in a block too)."""
    inline = re.findall(r"(?<!`)`(atpstar [^`]+)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S))
    return [c for c in inline if len(c.split()) > 2 and not re.search(r"\b[A-Z]{1,3}\b|\[|\.\.\.", c)]


def commands() -> list[tuple[str, str]]:
    """(document, command line) for every shell command, blocks first, in the documents' order."""
    found = []
    for path in DOCUMENTS:
        found += [(path.name, c) for b in blocks(path) if b.lang == "bash" for c in shell_lines(b)]
        found += [(path.name, c) for c in inline_commands(path.read_text(encoding="utf-8"))]
    return found


# ------------------------------------------------------------------------------------------ atpstar commands
def as_quick(command: str, model: str) -> list[str]:
    """A documented ``atpstar`` command with the tiny model in place of any --model, at most 2 pairs,
    400 subsets unless it says how many (seconds, not minutes) and --quiet where it applies."""
    args = shlex.split(command)[1:]
    if "--model" in args:
        i = args.index("--model")
        del args[i:i + 2]
    if args[0] in ("run", "demo", "tasks", "evaluate"):
        args += ["--model", model]
    if args[0] in ("run", "demo", "resume", "evaluate") and "--quiet" not in args:
        args.append("--quiet")
    if args[0] in ("run", "demo", "evaluate") and "--pairs" in args:
        i = args.index("--pairs")
        args[i + 1] = str(min(int(args[i + 1]), 2))
    elif args[0] in ("run", "demo"):
        args += ["--pairs", "2"]
    if args[0] in ("run", "demo") and "--samples" not in args:
        args += ["--samples", "400"]
    return args


PAIRS = [
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "noise": "When Anna and Paul went to the store, Paul gave a drink to", "answer": " Mary", "distractor": " John"},
    {"clean": "When Susan and Peter went to the park, Peter gave a book to",
     "noise": "When Laura and David went to the park, David gave a book to", "answer": " Susan", "distractor": " Peter"},
]


def test_every_atpstar_command_of_the_documents_and_of_help_runs(tiny_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The documents' ``atpstar`` commands, then every --help's examples, in one folder (the same command
    once; a run's resume / report / export refer to it, so distinct runs use distinct folders)."""
    found = [(doc, c) for doc, c in commands() if c.startswith("atpstar ")]
    found += [("--help", c) for k in ("main", "run", "demo", "report", "resume", "export", "evaluate", "tasks")
              for c in shell_lines(Block("--help", "bash", EXAMPLES[k], 0)) if c.startswith("atpstar ")]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    seen = []
    for doc, command in found:
        if command not in seen:
            seen.append(command)
            assert main(as_quick(command, tiny_dir)) == 0, f"{doc}: {command}\n{capsys.readouterr().err}"
    assert {c.split()[1] for c in seen} == {"run", "demo", "resume", "report", "tasks", "export", "evaluate"}
    assert (tmp_path / "submission").is_dir() and list(tmp_path.glob("runs/*/eap-graph.json"))


# ----------------------------------------------------------------------------------- other shell commands
@dataclass
class Other:
    how: str
    """``make-n``: ``make -n TARGET`` must name ``expect``; ``argparse``: the script's parser accepts the
    documented arguments; ``skip``: not run here."""
    why: str
    expect: str = ""


EDGES_QUICK = "tests/test_edges_evidence.py::test_quick_runs_end_to_end_and_resumes"
STUDY_QUICK = "tests/test_study.py::test_study_quick_runs_end_to_end_and_leaves_the_docs_alone (slow: SmolLM2)"
OTHER = {
    "make demo": Other("make-n", "installs into .venv (pip), then `atpstar demo`, which the atpstar test above "
                       "runs on the tiny model", "atpstar demo"),
    "make test": Other("make-n", "runs this test suite itself (CI runs it as .ci/run)", "pytest"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_evidence --readers 20":
        Other("argparse", f"hours of exact edge patching on SmolLM2 (resumes from the caches); quick variant: {EDGES_QUICK}"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_evidence --quick --out /tmp/q":
        Other("argparse", f"the quick variant itself, run end to end in {EDGES_QUICK}"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.edges_baselines_evidence":
        Other("argparse", f"the baselines on the cached SmolLM2 edge truth; its --quick variant runs in {EDGES_QUICK}"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python -m benchmarks.atp_cost":
        Other("argparse", "AtP variants' time and memory on SmolLM2, each in a child process (a minute or more); "
              "its child-process helper is tested in tests/test_benchmarks_isolated.py"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.study":
        Other("argparse", f"the study: hours on SmolLM2; quick variant: {STUDY_QUICK}"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.study --groups neuron_pos --baselines Blocks,Hierarchical":
        Other("argparse", f"hours on SmolLM2; quick variant: {STUDY_QUICK}"),
    "OMP_NUM_THREADS=1 PYTHONPATH=src python -m benchmarks.study --model gemma3-270m --groups attn --pairs 2 --baselines Blocks,Hierarchical":
        Other("argparse", f"hours on Gemma 3 270M; quick variant: {STUDY_QUICK}"),
    "PYTHONPATH=src python -m benchmarks.study --docs-only":
        Other("argparse", f"rewrites docs/study.md and its figures (about a minute of plotting); {STUDY_QUICK} "
              "runs the same docs step into a temporary folder"),
    "torchrun --nproc_per_node 2 my_run.py":
        Other("skip", "two processes; the my_run.py block below runs here in one process, and two gloo processes "
              "run in tests/test_scale.py::test_two_processes_equal_one"),
}
"""Every shell command of the documents that is not an ``atpstar`` command, and how it is checked."""


class _Parsed(Exception):
    pass


def parses(script: Path, argv: list[str], monkeypatch) -> argparse.Namespace:
    """``script``'s own ``main(argv)`` up to its argument parser: the parsed arguments (nothing runs)."""
    real = argparse.ArgumentParser.parse_args

    def stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", stop)
    monkeypatch.syspath_prepend(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"doc_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(script), *argv])  # for a main() that reads sys.argv itself
    with pytest.raises(_Parsed) as parsed:
        module.main(argv) if inspect.signature(module.main).parameters else module.main()
    monkeypatch.undo()
    return parsed.value.args[0]


def test_every_other_shell_command_is_listed_and_checked(monkeypatch):
    found = {c for _, c in commands() if not c.startswith("atpstar ")}
    assert found == set(OTHER), f"unlisted: {found - set(OTHER)}; no longer documented: {set(OTHER) - found}"
    for command, other in OTHER.items():
        words = shlex.split(command)
        while "=" in words[0]:
            words = words[1:]  # environment variables
        if other.how == "make-n" and shutil.which("make"):
            dry = subprocess.run(["make", "-n", "-C", str(ROOT), *words[1:]], capture_output=True, text=True)
            assert dry.returncode == 0 and other.expect in dry.stdout, (command, dry.stderr)
        elif other.how == "make-n":  # no make here: the target's recipe, read from the Makefile
            recipe = re.search(rf"^{words[1]}:.*\n((?:\t.*\n)+)", (ROOT / "Makefile").read_text(), re.M)
            assert recipe and other.expect in recipe[1], command
        elif other.how == "argparse":
            assert words[:2] == ["python", "-m"], command
            script = ROOT / (words[2].replace(".", "/") + ".py")
            assert script.is_file(), command
            args = parses(script, words[3:], monkeypatch)
            assert vars(args), command
        else:
            assert other.how == "skip" and other.why, command


def test_quick_variants_named_for_the_benchmarks_exist():
    for name in (EDGES_QUICK, STUDY_QUICK.split(" ")[0]):
        path, test = name.split("::")
        assert f"def {test}(" in (ROOT / path).read_text(encoding="utf-8"), name


# --------------------------------------------------------------------------------------------- code blocks
NOT_CODE = {"", "json", "csv", "text"}


def test_no_command_hides_outside_a_bash_block():
    """Output, folder trees, tables and data are not code; a shell command must sit in a ``bash`` block
    (or a ``python`` one), where the tests above find it."""
    langs = {b.lang for b in ALL}
    assert langs <= NOT_CODE | {"bash", "python"}, langs
    for b in ALL:
        if b.lang in NOT_CODE:
            starts = [line for line in b.text.splitlines() if line.strip().startswith(SHELL_WORDS)]
            assert not starts, f"{b.doc}:{b.line}: a command outside a bash block: {starts[0]}"


PRELUDE = {
    "diagnostic.md": "model = atpstar.load_model('default')\npairs = atpstar.tasks.ioi(model, n=2, seed=0)\n",
    "methods.md": "model = atpstar.load_model('default')\npairs = atpstar.tasks.ioi(model, n=2, seed=0)\n",
    "circuits.md": "import atpstar\nmodel = atpstar.load_model('default')\npairs = atpstar.tasks.ioi(model, n=2, seed=0)\n",
}
"""Names a document's code uses without defining them (the reader has them from an earlier step; the
other documents' first blocks define their own)."""

BEFORE = {
    ("circuits.md", 0): "circuit_a = atpstar.edges.atp(model, pairs).edges(20)\n"
                        "circuit_b = atpstar.edges.atp(model, pairs).edges(40)\n",
    ("edges.md", 1): "my_edges = atpstar.edges.atp(model, pairs).edges(40)\n"
                     "exact = atpstar.edges.edge_acp(model, pairs, my_edges)\n",
}
"""(document, block number) -> code run before that block: the inputs it names as placeholders."""

QUICK = {
    ("README.md", "n=8, seed=0"): "n=2, seed=0",
    ("README.md", "samples=600, p=0.05"): "samples=60, p=0.2",
    ("cli.md", 'RunConfig(task="ioi", pairs=8,'): 'RunConfig(model=TINY, task="ioi", pairs=2, samples=400,',
    ("diagnostic.md", "samples=1000, p=0.05, delta=0.05"): "samples=100, p=0.1, delta=0.05",
    # the tiny model's 408 attention nodes all fit the default budget: leave some unverified to bound
    ("diagnostic.md", 'scores, diagnose={"samples": 1000, "p": 0.05}'):
        'scores, budget=atpstar.Budget(nodes=50), diagnose={"samples": 100, "p": 0.1}',
    ("diagnostic.md", "d.rebound(more_verified)"): "d.rebound(atpstar.verify(model, pairs, scores, budget=atpstar.Budget(nodes=80)))",
    ("edges.md", "n=4, seed=0"): "n=2, seed=0",
    ("edges.md", '"L3.head.H5@12 -> L7.k.G1@12"'): '"L0.head.H1@12 -> L1.k.G1@12"',  # the tiny model has 2 layers
    ("edges.md", "p=0.01, samples=1000, seed=0"): "p=0.05, samples=20, seed=0",
    ("edges.md", "samples=300, p=0.05, delta=0.05"): "samples=60, p=0.2, delta=0.05",
    ("edges.md", "edges=into, samples=300, p=0.05"): "edges=into, samples=60, p=0.2",
    ("edges.md", "d.rebound(more_checked)"): "d.rebound(atpstar.verify(model, pairs, scores, budget=atpstar.Budget(nodes=40)))",
    ("edges.md", "'L20.q.H3', 'L20.k.G1', 'L20.v.G1'"): "'L1.q.H3', 'L1.k.G1', 'L1.v.G1'",
    ("methods.md", "method(model, pairs, kinds=..., metric=..., **options)"): 'atpstar.atp(model, pairs, kinds="attn", metric="logit_diff")',
    ("scaling.md", "n=64"): "n=2",
    ("tasks.md", "n=64"): "n=4",
    ("tasks.md", "only_correct=True"): "only_correct=False",  # a random model gets no pair right
}
"""(document, text) -> its quick variant: fewer pairs and subsets, the tiny model's layer numbers,
a placeholder filled in. Each text must still be in its document."""


def runnable(doc: str) -> list[str]:
    """The document's Python blocks, quick variants applied, preceded by what they assume."""
    out = []
    for i, b in enumerate(x for x in ALL if x.doc == doc and x.lang == "python"):
        code = b.text
        for (d, old), new in QUICK.items():
            if d == doc:
                code = code.replace(old, new)
        out.append(BEFORE.get((doc, i), "") + code)
    return out


def test_every_quick_variant_still_matches_its_document():
    for doc, old in QUICK:
        code = "".join(b.text for b in ALL if b.doc == doc and b.lang == "python")
        assert old in code, f"{doc}: {old!r} is no longer in its code: update QUICK"
    for doc, i in BEFORE:
        assert i < sum(b.doc == doc and b.lang == "python" for b in ALL), (doc, i)


PYTHON_DOCS = sorted({b.doc for b in ALL if b.lang == "python"})


@pytest.mark.parametrize("doc", PYTHON_DOCS)
def test_the_python_examples_run(doc, tiny_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    model = atpstar.load_model(tiny_dir)
    monkeypatch.setattr(atpstar, "load_model", lambda *args, **kwargs: model)
    monkeypatch.chdir(tmp_path)
    for b in ALL:  # the pair files of docs/tasks.md, under the name its example reads
        if b.lang in ("json", "csv"):
            (tmp_path / f"my_pairs.{b.lang.replace('json', 'jsonl')}").write_text(b.text)
    space = {"__name__": "__docs__", "TINY": tiny_dir}
    exec(compile("import atpstar\n" + PRELUDE.get(doc, ""), f"{doc} (prelude)", "exec"), space)
    for i, code in enumerate(runnable(doc)):
        exec(compile(code, f"{doc} (python block {i})", "exec"), space)
    out = capsys.readouterr().out
    if doc == "README.md":
        assert "With probability at least 0.95" in out and re.search(r"L\d\.(q|k|v|head)\.", out)
        assert (tmp_path / "circuit.json").is_file()
    if doc == "scaling.md":
        assert (tmp_path / "scores.csv").is_file()
    if doc == "tasks.md":  # the CSV example, which its Python names only in a comment
        assert len(atpstar.tasks.from_csv(tmp_path / "my_pairs.csv", model)) == 1
