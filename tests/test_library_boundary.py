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
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)
          and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module",
                                                                              "__import__")):
      names.append(node.args[0].value)
  return names


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
