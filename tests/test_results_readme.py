"""The README's result tables are what `results/*.json` give: no number can drift from the data."""
import json
import os
import re
import shutil

import pytest

from densedpo_jax import results_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "results")
NUMBER = re.compile(r"[-+]?\d+\.\d+")


def _readme():
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def _results_section(text):
  start = text.index("## Results")
  end = text.index("\n## ", start + 1)
  return text[start:end]


def test_every_results_table_is_a_generated_block():
  section = _results_section(_readme())
  outside = results_tables.BLOCK.sub("", section)
  # Tables of results (decimal numbers) only; a table of commands may stand outside.
  stray = [line for line in outside.splitlines() if line.startswith("|") and NUMBER.search(line)]
  assert not stray, f"README Results tables outside a <!-- table:NAME --> block: {stray[:3]}"
  assert len(results_tables.BLOCK.findall(section)) >= 5


def test_every_number_in_the_readme_tables_comes_from_the_results_files():
  text = _readme()
  blocks = results_tables.BLOCK.findall(text)
  assert {name for _, name, _, _ in blocks} >= {"main", "claims", "tune", "tuned", "main_job"}
  for _, name, body, _ in blocks:
    want = results_tables.TABLES[name](RESULTS) + "\n"
    missing = [n for n in NUMBER.findall(body) if n not in NUMBER.findall(want)]
    assert not missing, (f"README table {name!r}: {missing[:5]} are not in what results/*.json give; "
                         "run python -m densedpo_jax.results_tables --readme=README.md")
    assert body == want, f"README table {name!r} differs from its rendering from results/*.json"


def test_a_changed_result_changes_the_rendered_table(tmp_path):
  for name in os.listdir(RESULTS):
    if name.endswith(".json"):
      shutil.copy(os.path.join(RESULTS, name), tmp_path / name)
  before = results_tables.main_table(str(tmp_path))
  data = json.load(open(tmp_path / "shapesworld.json"))
  run = next(r for r in data["runs"] if r["arm"] == "dense")
  seed = str(data["config"]["eval_seeds"][0])
  run["eval"][seed]["visual_quality"] += 0.05
  json.dump(data, open(tmp_path / "shapesworld.json", "w"))
  assert results_tables.main_table(str(tmp_path)) != before


def test_an_unknown_block_is_an_error():
  with pytest.raises(ValueError, match="unknown table block 'nope'"):
    results_tables.fill("<!-- table:nope -->\n| x |\n<!-- /table -->", RESULTS)
