"""The library never imports the research projects beside it (projects/): every module of
densedpo_jax/ is parsed and each of its imports, plain or by string, is checked."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "densedpo_jax")


def _imports(path):
  """Every module name that `path` imports: import statements (at any depth, relative ones
  resolved) and string arguments of importlib.import_module / __import__."""
  tree = ast.parse(open(path, encoding="utf-8").read(), filename=path)
  package = os.path.relpath(os.path.dirname(path), ROOT).replace(os.sep, ".")
  names = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names += [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        names.append(f"{base}.{node.module}" if node.module else base)
      else:
        names.append(node.module)
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
      "projects.a", "projects.b", "projects", "projects.e"]
