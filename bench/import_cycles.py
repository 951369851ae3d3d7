"""Import loops among Stagescope's modules, found on grimp's import graph (the one import-linter checks).

grimp reads every import statement, including those inside functions, so a loop hidden in a lazy
import counts.  A loop is a strongly connected component (networkx) of two or more modules; an
import of a package's ``__init__`` by its own sub-module is counted like any other edge.

    python bench/import_cycles.py [package ...]      # default: app; exit 1 when a loop is found
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
import networkx as nx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))  # this checkout's app, not an installed copy


def import_cycles(package: str, root: str = "app") -> list[list[str]]:
    """Each import loop among the modules of ``package`` (sorted module names), largest first."""
    graph = grimp.build_graph(root)
    modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
    edges = nx.DiGraph()
    for module in modules:
        for imported in graph.find_modules_directly_imported_by(module):
            if imported in modules:
                edges.add_edge(module, imported)
    loops = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    return sorted(loops, key=lambda c: (-len(c), c))


def main(argv: list[str]) -> int:
    """Print every loop of each package named on the command line (default app)."""
    found = 0
    for package in argv or ["app"]:
        for loop in import_cycles(package):
            found += 1
            print(f"{package}: loop of {len(loop)} modules: {' '.join(loop)}")
    print(f"{found} import loop(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
