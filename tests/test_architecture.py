"""The rules of the house (docs/architecture.md), checked on the source: imports point down the stack,
no import circle, no module over the size limit, no public name of the package root hides a
sub-package, no public namespace has two names for one thing, and nothing cites what a reader of the
repository does not have."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from pathlib import Path

import atpstar

SRC = Path(atpstar.__file__).parent
ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400

# Each stage may import itself and any stage of a lower rank; equal ranks may not import each other.
RANK = {"vocabulary": 0, "substrate": 1, "tasks": 2, "methods": 2, "edges": 3, "diagnostics": 4, "circuits": 4, "verification": 5, "run": 6}


def stage(module: str) -> str:
    """``atpstar.verification.loop`` -> ``verification``; a top-level module is the shared vocabulary."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in RANK else "vocabulary"


def modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every atpstar module ``name`` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found, known = set(), modules()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            names = [f"{base}.{a.name}" for a in node.names]
            targets = names if any(n in known for n in names) else [base]  # `from . import module` names the module
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found.update(t for t in targets if t and t.startswith("atpstar"))
    return {t for t in found if t in known and t != name}


def test_imports_point_down_the_stack():
    wrong = []
    for name, path in modules().items():
        if name in ("atpstar", "atpstar.__main__"):
            continue  # the front door re-exports every stage
        for target in imports(name, path):
            if target == "atpstar":
                wrong.append(f"{name} imports the package root (import the module that defines the name)")
                continue
            a, b = stage(name), stage(target)
            if a != b and RANK[b] >= RANK[a]:
                wrong.append(f"{name} ({a}) imports {target} ({b})")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_circle():
    graph = {name: imports(name, path) for name, path in modules().items()}
    # a package's __init__ importing its own modules is not a circle through them
    edges = {n: {t for t in ts if not (n.startswith(t + ".") and (SRC.parent / t.replace(".", "/") / "__init__.py").exists())}
             for n, ts in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for t in edges.get(n, ()):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_over_the_size_limit():
    big = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split them by idea): {big}"


def test_no_public_name_shadows_a_sub_package():
    """``import atpstar.verification as v`` must give the package, and ``atpstar.X`` one thing only."""
    subpackages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()}
    shadowed = [name for name in atpstar.__all__ if name in subpackages
                and not isinstance(getattr(atpstar, name), type(atpstar))]
    assert not shadowed, f"public names that hide a sub-package of the same name: {shadowed}"
    import atpstar.verification as v
    assert v.Budget is atpstar.Budget and callable(atpstar.verify)


# Deliberate second names for one object, each with its reason (none today: one spelling per thing).
DOCUMENTED_ALIASES: dict[tuple[str, ...], str] = {}


def public_namespaces() -> dict[str, object]:
    """The package root and every sub-package: what a user imports names from."""
    import pkgutil

    names = ["atpstar"] + [m.name for m in pkgutil.walk_packages(atpstar.__path__, "atpstar.") if m.ispkg]
    return {name: importlib.import_module(name) for name in names}


def test_no_public_namespace_binds_two_names_to_one_object():
    """One obvious spelling each: no ``edge_atp = atp`` pairs in a namespace a user imports from."""
    pairs = []
    for name, module in public_namespaces().items():
        public = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
        by_object: dict[int, list[str]] = {}
        for attr in public:
            value = getattr(module, attr)
            if isinstance(value, (bool, int, float, str, type(None), type(atpstar))):
                continue  # equal constants are not aliases; sub-modules are namespaces, not names
            by_object.setdefault(id(value), []).append(attr)
        pairs += [f"{name}: {' = '.join(sorted(group))}" for group in by_object.values()
                  if len(group) > 1 and tuple(sorted(group)) not in DOCUMENTED_ALIASES]
    assert not pairs, "public names bound to the same object (keep one spelling, or document the alias):\n" + \
        "\n".join(pairs)


def test_nothing_cites_what_a_user_of_the_repository_does_not_have():
    """Docs, docstrings, --help and benchmarks explain in their own words: no citation of the method's
    private specification or of issue numbers (a reader of the repository has neither)."""
    cites = re.compile(r"SPEC(\.md)?\s*§|SPEC\.md|\bissue\s+#?\d+", re.I)
    files = [*SRC.rglob("*.py"), *(ROOT / "docs").glob("*.md"), ROOT / "README.md",
             *(ROOT / "benchmarks").rglob("*.py")]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in files
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if cites.search(line)]
    assert not found, f"cite nothing outside the repository: {found[:10]}"
