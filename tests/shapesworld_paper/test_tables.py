"""The README's result tables are what the results' JSON files give: no number can drift from
the data."""
import json
import os
import re
import shutil

import pytest

from projects.shapesworld_paper import tables as results_tables

ROOT = results_tables.ROOT
RESULTS = results_tables.RESULTS
NUMBER = re.compile(r"[-+]?\d+\.\d+")


PROJECT_README = os.path.join(ROOT, "projects", "shapesworld_paper", "README.md")
# Blocks each README must have: the project's results, and the main job's record in the
# repository's README.
WANT = {PROJECT_README: {"main", "claims", "verdicts", "tune", "tuned", "motion", "appendix_b",
                         "objective", "objective_diff", "objective_verdicts", "segment_speed"},
        os.path.join(ROOT, "README.md"): {"main_job"}}
# Words of a verdict on a claim: only the generated blocks may use them.
VERDICT = re.compile(r"\b(reproduc(e|es|ed|ing)|holds?|fails?)\b", re.I)


def _read(path):
  with open(path) as f:
    return f.read()


def _results_section(text):
  start = text.index("## Results")
  end = text.find("\n## ", start + 1)
  return text[start:] if end < 0 else text[start:end]


def test_every_results_table_is_a_generated_block():
  section = _results_section(_read(PROJECT_README))
  outside = results_tables.BLOCK.sub("", section)
  # Tables of results (decimal numbers) only; a table of commands may stand outside.
  stray = [line for line in outside.splitlines() if line.startswith("|") and NUMBER.search(line)]
  assert not stray, f"README Results tables outside a <!-- table:NAME --> block: {stray[:3]}"
  assert len(results_tables.BLOCK.findall(section)) >= 5


def test_every_verdict_on_a_claim_is_generated_from_the_claims_table():
  outside = results_tables.BLOCK.sub("", _results_section(_read(PROJECT_README)))
  typed = [line for line in outside.splitlines() if VERDICT.search(line)]
  assert not typed, f"verdicts typed outside the generated blocks: {typed[:3]}"
  verdicts = results_tables.verdicts_table(RESULTS).splitlines()
  claims = [row for row in results_tables.claims_table(RESULTS).splitlines()[2:]]
  assert len(verdicts) == len(claims) >= 10
  for sentence, row in zip(verdicts, claims):
    assert row.split(" | ")[0][2:] in sentence
    assert (": reproduced." in sentence) == row.endswith("| yes |"), (sentence, row)


def test_the_verdict_check_catches_a_typed_verdict():
  assert VERDICT.search("DenseDPO keeps motion: reproduced")
  assert VERDICT.search("the claim holds")
  assert not VERDICT.search("the reproduction of the paper")


@pytest.mark.parametrize("readme", sorted(WANT))
def test_every_number_in_the_readme_tables_comes_from_the_results_files(readme):
  blocks = results_tables.BLOCK.findall(_read(readme))
  assert {name for _, name, _, _ in blocks} >= WANT[readme]
  for _, name, body, _ in blocks:
    want = results_tables.TABLES[name](
        results_tables.MAIN_JOB_RESULTS if name == "main_job" else RESULTS) + "\n"
    missing = [n for n in NUMBER.findall(body) if n not in NUMBER.findall(want)]
    assert not missing, (f"{readme} table {name!r}: {missing[:5]} are not in what the results "
                         "files give; run python -m projects.shapesworld_paper.tables "
                         f"--readme={os.path.relpath(readme, ROOT)}")
    assert body == want, f"{readme} table {name!r} differs from its rendering from the results"


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
