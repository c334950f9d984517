"""The shape of Kepler's import graph: import loops and the longest chain of module imports.

Every import counts, at module level, inside functions or under TYPE_CHECKING (grimp's static graph, the
one `lint-imports` checks). A loop is a set of modules that import each other round a cycle; the depth is
the number of modules on the longest chain of imports that visits no module twice.

    python benchmarks/import_graph.py [--root DIR]     # DIR: a checkout (default: this one)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grimp

PACKAGES = ("discovery", "evaluators")


def strongly_connected(nodes: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components, iteratively (the graph is small, but recursion depth should not matter)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        component.append(top)
                        if top == node:
                            break
                    out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(edges[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def longest_chain(nodes: set[str], edges: dict[str, set[str]]) -> list[str]:
    """The longest chain of imports that visits no module twice (exhaustive: the graph has ~50 modules)."""
    best: list[str] = []

    def walk(path: list[str], seen: set[str]) -> None:
        nonlocal best
        if len(path) > len(best):
            best = list(path)
        for child in sorted(edges[path[-1]] - seen):
            seen.add(child)
            path.append(child)
            walk(path, seen)
            path.pop()
            seen.discard(child)

    for root in sorted(nodes):
        walk([root], {root})
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parent.parent))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(args.root).resolve()))
    graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    nodes = set(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) & nodes for m in nodes}
    components = strongly_connected(nodes, edges)
    loops = [c for c in components if len(c) > 1 or c[0] in edges[c[0]]]
    chain = longest_chain(nodes, edges)
    print(f"{len(nodes)} modules, {sum(map(len, edges.values()))} imports between them")
    print(f"import loops: {len(loops)}")
    for loop in loops:
        print(f"  loop: {' <-> '.join(loop)}")
    print(f"depth (modules on the longest chain of imports): {len(chain)}")
    print("  " + " -> ".join(chain))
    return 0


if __name__ == "__main__":
    sys.exit(main())
