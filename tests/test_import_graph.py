"""The import contract: no cycle among the library's modules.

Every ``import waferflow...`` counts, at module level or inside a function (a lazy import still ties the two
modules together). ``KNOWN_CYCLES`` lists the knots that exist today and are being untied; a new cycle, or a
known one that grows, fails the suite.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

KNOWN_CYCLES: list[set[str]] = []


def module_graph(src: Path) -> dict[str, set[str]]:
    """module -> the library modules it imports (a package's own submodules' parent edges left out)."""
    mods = {}
    for f in src.rglob("*.py"):
        name = ".".join(f.relative_to(src).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f

    def resolve(n: str) -> str:
        while n and n not in mods:
            n = n.rsplit(".", 1)[0] if "." in n else ""
        return n

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for t in {resolve(n) for n in names if n.split(".")[0] in {m.split(".")[0] for m in mods}}:
                if t and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(comp)
    return out


def test_no_new_import_cycle():
    found = cycles(module_graph(SRC))
    new = [sorted(c) for c in found if not any(c <= k for k in KNOWN_CYCLES)]
    assert not new, f"new import cycle(s): {new}; import the lower layer from the higher one, never both ways"


def test_known_cycles_are_still_there():
    # when a knot is untied, take it off KNOWN_CYCLES so it cannot come back
    found = cycles(module_graph(SRC))
    for k in KNOWN_CYCLES:
        assert any(k & c for c in found), f"{sorted(k)} is no longer a cycle: remove it from KNOWN_CYCLES"


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    import pkg.c\n")
    (pkg / "c.py").write_text("from pkg.a import x\n")
    (pkg / "d.py").write_text("import pkg.a\n")
    assert cycles(module_graph(tmp_path)) == [{"pkg.a", "pkg.sub.b", "pkg.c"}]


#: The library's layers, lowest first (docs/ARCHITECTURE.md draws them). A module may import its own layer and
#: the layers before it, never a later one.
LAYERS = ["errors", "config", "forms", "host", "data", "models", "predictors", "plots", "evaluation", "train", "export",
          "gates", "profiles", "selection", "labelqueue", "tracking", "drift", "orchestration", "cli", "__main__"]


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else None
    return LAYERS.index(top) if top in LAYERS else None


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = module_graph(SRC)
    unplaced = sorted(m for m in graph if m != "waferflow" and _layer(m) is None)
    assert not unplaced, f"modules outside LAYERS: {unplaced}; add their top-level name where it belongs"
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                    if _layer(m) is not None and _layer(t) is not None and _layer(t) > _layer(m))
    assert not upward, f"imports against the dependency order: {upward}"
