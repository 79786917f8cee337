"""Import boundaries, checked on the parsed source (imports plain or by string):

- the library (densedpo_jax/) never imports the research projects beside it (projects/);
- a benchmark imports the library, the shipped configs, the tests' helpers and the folder's two
  support modules (timing.py, torch_videodit.py), never another benchmark's internals, and never
  edits sys.path; a benchmark's test may import the tool it tests;
- no benchmark shares a module name with the library.
"""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "densedpo_jax")
BENCHMARKS = os.path.join(ROOT, "benchmarks")
BENCHMARK_SUPPORT = ("benchmarks.timing", "benchmarks.torch_videodit")


def _imports(path):
  """Every module name that `path` imports: import statements (at any depth, relative ones
  resolved; `from m import x` gives both `m` and `m.x`, which may be a module) and string
  arguments of importlib.import_module / __import__."""
  tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
  package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        module = f"{base}.{node.module}" if node.module else base
      else:
        module = node.module
      names += [module] + [f"{module}.{a.name}" for a in node.names]
    elif _string_import(node):
      names.append(_string_import(node))
  return names


def _string_import(node):
  """The module name of `importlib.import_module("m")` / `__import__("m")`, else None."""
  if (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
      and isinstance(node.args[0].value, str)
      and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module",
                                                                          "__import__")):
    return node.args[0].value
  return None


def _library_files():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        yield os.path.join(folder, name)


def test_no_library_module_imports_a_project():
  files = list(_library_files())
  assert len(files) > 50  # The walk found the package.
  offenders = [f"{os.path.relpath(f, ROOT)} imports {n}" for f in files for n in _imports(f)
               if n == "projects" or n.startswith("projects.")]
  assert not offenders, offenders


def test_the_check_sees_every_kind_of_import(tmp_path):
  path = tmp_path / "mod.py"
  path.write_text("import projects.a\nfrom projects.b import c\nimport importlib\n"
                  "def f():\n  from projects import d\n  importlib.import_module('projects.e')\n")
  assert [n for n in _imports(str(path)) if n.startswith("projects")] == [
      "projects.a", "projects.b", "projects.b.c", "projects", "projects.d", "projects.e"]


def _benchmark_files():
  return sorted(os.path.join(BENCHMARKS, f) for f in os.listdir(BENCHMARKS) if f.endswith(".py"))


def _project_import(name):
  return name.split(".")[0] in ("densedpo_jax", "configs", "tests", "benchmarks", "projects")


def test_benchmarks_import_the_library_and_the_support_modules_only():
  files = _benchmark_files()
  assert len(files) >= 8  # The listing found the folder.
  offenders = []
  for f in files:
    own = os.path.basename(f)
    tested = f"benchmarks.{own[len('test_'):-3]}" if own.startswith("test_") else None
    may = BENCHMARK_SUPPORT + tuple(filter(None, [tested])) + ("tests.helpers",)
    for n in filter(_project_import, _imports(f)):
      allowed = (n.split(".")[0] in ("densedpo_jax", "configs") or n == "benchmarks"
                 or any(n == m or n.startswith(m + ".") for m in may))
      if not allowed:
        offenders.append(f"benchmarks/{own} imports {n}")
    if "sys.path" in open(f, encoding="utf-8").read():
      offenders.append(f"benchmarks/{own} edits sys.path")
  assert not offenders, offenders


def test_no_benchmark_shares_a_module_name_with_the_library():
  library = {name for f in _library_files() for name in [os.path.basename(f)]}
  shared = sorted(os.path.basename(f) for f in _benchmark_files()
                  if os.path.basename(f) in library)
  assert not shared, shared


# The package's layers, bottom to top: a module imports from its own sub-package or from a lower
# layer, never from a higher one (data flows one way). Two sub-packages on one layer never import
# each other, except the commands users type (the top layer), which may call one another.
LAYERS = (
    ("console", "distributed"),             # helpers with no package imports
    ("metrics",),                           # video metrics and intervals: arrays and files
    ("model", "shapesworld"),               # the networks and their weights; the built-in world
    ("objectives",),                        # flow, losses, DPO errors, sampling
    ("data",),                              # records, segments, ArrayRecord/TFDS, pipelines
    ("interop",),                           # other projects' formats (optional extras)
    ("previews",),                          # frames, GIFs, grids; MP4 through interop.video_io
    ("training", "labeling"),               # the train loop and step; labelers
    ("tasks", "annotate"),                  # pairs, evaluate, the arm pipeline; the label page
    ("main", "plan", "convert", "encode", "decode", "export", "video_metrics", "__init__"),  # commands
)
COMMANDS = LAYERS[-1]


def _module_name(path):
  rel = os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _import_graph():
  """`{module: {package modules it imports}}` over densedpo_jax/, at any depth: `from p import m`
  is an import of the module `p.m` where that is a module, else of `p` (its `__init__`)."""
  files = {_module_name(f): f for f in _library_files()}
  graph = {}
  for m, f in files.items():
    targets = set()
    for node in ast.walk(ast.parse(open(f, encoding="utf-8").read(), filename=f)):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        targets.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in files
                       else node.module for a in node.names)
    graph[m] = {t for t in targets if t in files and t != m}
  return graph


def _component(module):
  """The top-level part of `densedpo_jax.<part>...`: a sub-package or a top-level module."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def _cycles(graph):
  """Strongly connected components with more than one node (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in list(graph):
    if v not in index:
      visit(v)
  return out


def test_no_import_cycle_between_modules_or_subpackages():
  graph = _import_graph()
  assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # The walk found the imports.
  assert not _cycles(graph), _cycles(graph)
  packages = {}
  for m, targets in graph.items():
    packages.setdefault(_component(m), set()).update(
        _component(t) for t in targets if _component(t) != _component(m))
  assert not _cycles(packages), _cycles(packages)


def test_the_cycle_check_finds_a_cycle():
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_imports_go_down_the_layers():
  rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
  graph = _import_graph()
  assert set(map(_component, graph)) <= set(rank), set(map(_component, graph)) - set(rank)
  upward = [f"{m} imports {t}" for m, targets in graph.items() for t in targets
            if _component(m) != _component(t)
            and (rank[_component(t)] > rank[_component(m)]
                 or (rank[_component(t)] == rank[_component(m)]
                     and _component(m) not in COMMANDS))]
  assert not upward, upward


def test_no_string_import_of_a_package_module():
  found = []
  for f in _library_files():
    for node in ast.walk(ast.parse(open(f, encoding="utf-8").read())):
      if (_string_import(node) or "").startswith("densedpo_jax"):
        found.append(f"{os.path.relpath(f, ROOT)}:{node.lineno}")
  assert not found, found


def test_the_package_top_is_short_and_names_are_unique():
  top = sorted(f for f in os.listdir(PACKAGE) if f.endswith(".py"))
  assert len(top) <= 11, top
  names = [os.path.basename(f) for f in _library_files()]
  shared = sorted({n for n in names if names.count(n) > 1} - {"__init__.py", "__main__.py"})
  assert not shared, shared
