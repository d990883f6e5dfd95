"""Architecture checks on dltool's import graph, read from source with `ast`.

Nothing here imports dltool or TensorFlow: every `dltool/**/*.py` file
(except the data samples) is parsed, and each `import` statement, at module
level or inside a function (however nested), becomes an edge from the module
it is in to the dltool module it names:

* `import dltool.x.y` and `from dltool.x import y` (when `y` is a submodule)
  point to `dltool.x.y`; `from dltool.x import name` points to `dltool.x`;
  relative imports are resolved the same way.
* Importing `dltool.x.y` also runs `dltool/__init__.py` and
  `dltool/x/__init__.py`; those implicit parent edges are left out (they are
  not cycles in practice), but an explicit `import dltool` is an edge.
* In a file that imports `importlib`, a string constant naming a dltool
  module (`"dltool.tasks.sentiment"`, or `"module:attr"`) is an edge too, a
  deferred one (`importlib.import_module` registries hide cycles otherwise);
  it counts for cycles, layers and TensorFlow-in-core, not as a
  function-level import statement.

The checks: no import cycles; no edge to a higher layer (`LAYERS`, lowest
first); function-level ("deferred") imports of dltool modules only in
`dltool/cli.py` and the few commented places in `ALLOWED_DEFERRED`; and no
TensorFlow imports in `core`.

Run as a script to check another checkout (old flat layout included):

    python tests/test_architecture.py /path/to/checkout
"""

import ast
import dataclasses
import io
import sys
import tokenize
from collections import defaultdict, deque
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import its own layer or lower ones only.
LAYERS = ["core", "_tf", "data", "report", "tasks", "engine", "tuning", "serving", "cli"]

# Layers that must not import another layer below them: (importer, imported).
# Serving sits above the engine beside tuning, not on it.
FORBIDDEN_LAYER_EDGES = {("serving", "tuning")}

# Module (and, for a package, everything under it) -> layer. The root package
# `dltool` covers only `dltool/__init__.py`.
MODULE_LAYERS = {
    "dltool": "core",
    "dltool.core": "core",
    "dltool._tf": "_tf",
    "dltool.data": "data",
    "dltool.report": "report",
    "dltool.tasks": "tasks",
    "dltool.engine": "engine",
    "dltool.tuning": "tuning",
    "dltool.serving": "serving",
    "dltool.cli": "cli",
}

# The same layers for the old flat layout (before dltool/core existed), so
# `main` can count upward edges on an old checkout.
OLD_MODULE_LAYERS = {
    "dltool": "core",
    **{f"dltool.{name}": "core" for name in
       ["errors", "config", "runs", "project", "scaffold", "processes"]},
    "dltool._tf": "_tf",
    "dltool.data": "data",
    "dltool.plots": "report",
    "dltool.reports": "report",
    "dltool.tasks": "tasks",
    **{f"dltool.{name}": "engine" for name in
       ["runtime", "cluster", "callbacks", "training", "evaluation", "export",
        "predict", "modelfiles"]},
    **{f"dltool.{name}": "tuning" for name in
       ["tuning", "tuners", "trials", "search_space", "search_processes"]},
    "dltool.cli": "cli",
}

# Function-level imports of dltool modules outside dltool/cli.py, as
# (file, imported module). At most two; each import line needs a `#` comment
# on it or on the line above saying why it is deferred.
ALLOWED_DEFERRED = set()
MAX_ALLOWED_DEFERRED = 2

DEFERRED_OK_FILES = {"dltool/cli.py"}
SKIPPED_DIRS = [Path("dltool/data/samples")]
TF_MODULES = {"tensorflow", "keras", "keras_tuner", "keras_hub",
              "tensorflow_datasets"}


@dataclasses.dataclass(frozen=True)
class Import:
    """One imported name: `target` is the dotted module path as written
    (resolved for relative imports), `module` the dltool module it resolves
    to (None for non-dltool imports)."""

    source: str
    target: str
    module: str | None
    path: str
    line: int
    end_line: int
    deferred: bool
    dynamic: bool = False

    @property
    def where(self):
        """`file:line`, tagged when the import is not at module level."""
        if self.dynamic:
            return f"{self.path}:{self.line} (importlib string)"
        return f"{self.path}:{self.line}" + (" (in function)"
                                             if self.deferred else "")


# --- building the graph ---------------------------------------------------


def find_modules(root):
    """Maps each dltool module name to its file, relative to `root`."""
    modules = {}
    for path in sorted((root / "dltool").rglob("*.py")):
        rel = path.relative_to(root)
        if any(rel.is_relative_to(skip) for skip in SKIPPED_DIRS):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = rel
    return modules


def resolve(target, modules):
    """The dltool module `target` names: itself or its longest known parent."""
    if target != "dltool" and not target.startswith("dltool."):
        return None
    while target not in modules and "." in target:
        target = target.rsplit(".", 1)[0]
    return target if target in modules else None


def _absolute_base(node, source, is_package):
    """The package a `from ... import` statement imports from, absolute."""
    if not node.level:
        return node.module or ""
    package = source.split(".")
    if not is_package:
        package.pop()
    if node.level > 1:
        package = package[:len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def _targets(node, source, is_package, modules):
    """The dotted module paths one import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = _absolute_base(node, source, is_package)
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
            else base for alias in node.names]


def _walk_imports(tree):
    """Yields (import node, deferred) for every import in `tree`; deferred
    means inside a function, at any depth."""
    stack = [(tree, False)]
    while stack:
        node, deferred = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, deferred
        inner = deferred or isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        stack.extend((child, inner) for child in ast.iter_child_nodes(node))


def file_imports(root, name, rel, modules):
    """Every import in one module's file, as `Import` records."""
    tree = ast.parse((root / rel).read_text(encoding="utf-8"), str(rel))
    is_package = rel.name == "__init__.py"
    found = set()
    for node, deferred in _walk_imports(tree):
        for target in _targets(node, name, is_package, modules):
            found.add(Import(name, target, resolve(target, modules),
                             rel.as_posix(), node.lineno, node.end_lineno,
                             deferred))
    if any(imp.target.split(".")[0] == "importlib" for imp in found):
        found |= _dynamic_imports(tree, name, rel, modules)
    return sorted(found, key=lambda imp: (imp.line, imp.target))


def _dynamic_imports(tree, name, rel, modules):
    """String constants naming a dltool module: importlib's targets."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            target = node.value.split(":")[0]
            if target in modules and target != name:
                found.add(Import(name, target, target, rel.as_posix(),
                                 node.lineno, node.end_lineno, True, True))
    return found


def all_imports(root):
    """Every import in every dltool module under `root`."""
    modules = find_modules(root)
    return [imp for name, rel in modules.items()
            for imp in file_imports(root, name, rel, modules)]


def import_graph(imports):
    """dltool-internal edges: {source: {target module: [Import, ...]}}."""
    graph = defaultdict(lambda: defaultdict(list))
    for imp in imports:
        if imp.module is not None and imp.module != imp.source:
            graph[imp.source][imp.module].append(imp)
    return graph


# --- cycles ---------------------------------------------------------------


def strongly_connected(graph):
    """Tarjan's algorithm: the components with more than one module."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, {}):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = set()
            while node not in component:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _shortest_path(graph, start, goal, allowed):
    """Breadth-first path start..goal inside `allowed`, as a list."""
    previous, queue = {start: None}, deque([start])
    while queue:
        node = queue.popleft()
        if node == goal:
            path = []
            while node is not None:
                path.append(node)
                node = previous[node]
            return path[::-1]
        for succ in sorted(graph.get(node, {})):
            if succ in allowed and succ not in previous:
                previous[succ] = node
                queue.append(succ)
    return None


def find_cycles(graph):
    """The shortest cycle through each edge inside each strongly connected
    component, deduplicated: every edge that takes part in a cycle shows up
    in at least one. Each cycle is a list of modules, first == last."""
    cycles = set()
    for component in strongly_connected(graph):
        for source in component:
            for target in graph[source]:
                if target in component:
                    path = _shortest_path(graph, target, source, component)
                    ring = [source] + path[:-1]
                    turn = ring.index(min(ring))
                    cycles.add(tuple(ring[turn:] + ring[:turn]))
    return sorted([list(ring) + [ring[0]] for ring in cycles],
                  key=lambda cycle: (len(cycle), cycle))


def describe_cycle(cycle, graph):
    """`a -> b -> a`, then where each step's import is."""
    steps = [min(graph[a][b], key=lambda imp: (imp.deferred, imp.line))
             for a, b in zip(cycle, cycle[1:])]
    return (f"{' -> '.join(cycle)}\n"
            f"    at {', '.join(step.where for step in steps)}")


# --- layers ---------------------------------------------------------------


def layer_of(module, module_layers):
    """The layer `module` is in (longest matching entry), or None."""
    name = module
    while True:
        if name in module_layers and (name == module or name != "dltool"):
            return module_layers[name]
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]


def upward_edges(imports, module_layers):
    """Imports from a lower layer to a higher one, or along one of
    `FORBIDDEN_LAYER_EDGES`, as readable lines."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    found = []
    for imp in imports:
        if imp.module is None or imp.module == imp.source:
            continue
        src = layer_of(imp.source, module_layers)
        dst = layer_of(imp.module, module_layers)
        if src and dst and (rank[dst] > rank[src] or (src, dst) in FORBIDDEN_LAYER_EDGES):
            found.append(f"{imp.source} ({src}) -> {imp.module} ({dst}) "
                         f"at {imp.where}")
    return found


def unmapped_modules(modules, module_layers):
    """Modules that are in no layer."""
    return sorted(m for m in modules if layer_of(m, module_layers) is None)


# --- deferred imports and TensorFlow in core -------------------------------


def comment_lines(path):
    """Line numbers of the lines in `path` that carry a `#` comment."""
    tokens = tokenize.generate_tokens(
        io.StringIO(path.read_text(encoding="utf-8")).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def deferred_imports(imports):
    """Function-level import statements of dltool modules outside the CLI."""
    return [imp for imp in imports if imp.deferred and not imp.dynamic
            and imp.module is not None and imp.path not in DEFERRED_OK_FILES]


def tf_imports_in_core(imports, module_layers):
    """Direct TensorFlow/Keras (or dltool._tf) imports in core modules."""
    return [imp for imp in imports
            if layer_of(imp.source, module_layers) == "core"
            and (imp.target.split(".")[0] in TF_MODULES
                 or imp.module == "dltool._tf")]


# --- the tests ------------------------------------------------------------


def _lines(items):
    return "\n  " + "\n  ".join(items)


def _fail_if(items, header):
    """Fails the test with `header` and one line per item, if any."""
    if items:
        import pytest

        pytest.fail(header + _lines(items), pytrace=False)


def test_no_import_cycles():
    graph = import_graph(all_imports(REPO))
    cycles = find_cycles(graph)
    _fail_if([describe_cycle(c, graph) for c in cycles],
             f"{len(cycles)} import cycle(s), function-level imports "
             "included:")


def test_imports_point_to_same_or_lower_layer():
    assert set(MODULE_LAYERS.values()) <= set(LAYERS)
    _fail_if(unmapped_modules(find_modules(REPO), MODULE_LAYERS),
             "modules in no layer (add them to MODULE_LAYERS):")
    upward = upward_edges(all_imports(REPO), MODULE_LAYERS)
    _fail_if(upward, f"{len(upward)} import(s) to a higher layer (order: "
             f"{' < '.join(LAYERS)}; and none of {sorted(FORBIDDEN_LAYER_EDGES)}):")


def deferred_problems(root, imports):
    """Function-level dltool imports that are not allowed, allowed ones
    without a comment, and stale ALLOWED_DEFERRED entries."""
    problems, places = [], set()
    for imp in deferred_imports(imports):
        place = (imp.path, imp.module)
        places.add(place)
        where = f"{imp.source} -> {imp.module} at {imp.path}:{imp.line}"
        if place not in ALLOWED_DEFERRED:
            problems.append(f"{where}: not in ALLOWED_DEFERRED")
        elif not comment_lines(root / imp.path) & set(
                range(imp.line - 1, imp.end_line + 1)):
            problems.append(f"{where}: allowed, but needs a comment on its "
                            "line or the line above saying why")
    problems += [f"{path} -> {module}: in ALLOWED_DEFERRED but not imported "
                 "in a function there (remove it)"
                 for path, module in sorted(ALLOWED_DEFERRED - places)]
    return problems


def test_deferred_imports_only_where_allowed_and_commented():
    assert len(ALLOWED_DEFERRED) <= MAX_ALLOWED_DEFERRED, (
        f"ALLOWED_DEFERRED may list at most {MAX_ALLOWED_DEFERRED} places")
    _fail_if(deferred_problems(REPO, all_imports(REPO)),
             "function-level imports of dltool modules are for dltool/cli.py"
             " (and the ALLOWED_DEFERRED places):")


def test_core_does_not_import_tensorflow():
    _fail_if([f"{imp.source} imports {imp.target} at {imp.where}"
              for imp in tf_imports_in_core(all_imports(REPO), MODULE_LAYERS)],
             "core must not import TensorFlow/Keras or dltool._tf:")


# --- as a script ------------------------------------------------------------


def report(root):
    """Prints the cycles, upward edges, deferred imports and TensorFlow
    imports in core for the checkout at `root`; returns how many."""
    imports = all_imports(root)
    graph = import_graph(imports)
    new_layout = (root / "dltool" / "core").is_dir()
    layers = MODULE_LAYERS if new_layout else OLD_MODULE_LAYERS
    sections = [
        ("import cycles", [describe_cycle(c, graph)
                           for c in find_cycles(graph)]),
        ("modules in no layer",
         unmapped_modules(find_modules(root), layers)),
        ("upward imports", upward_edges(imports, layers)),
        ("function-level dltool imports outside dltool/cli.py",
         [f"{imp.source} -> {imp.module} at {imp.path}:{imp.line}"
          for imp in deferred_imports(imports)]),
        ("TensorFlow imports in core",
         [f"{imp.source} imports {imp.target} at {imp.where}"
          for imp in tf_imports_in_core(imports, layers)]),
    ]
    print(f"{root} ({'layered' if new_layout else 'old flat'} layout)")
    for title, items in sections:
        print(f"\n{len(items)} {title}" + (":" + _lines(items) if items
                                           else ""))
    return sum(len(items) for _, items in sections)


def main(argv):
    root = Path(argv[1]).resolve() if len(argv) > 1 else REPO
    return 1 if report(root) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
