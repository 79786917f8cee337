"""`eval/report.html`: one self-contained page of an evaluation (task=evaluate).

On top, a summary table: every model's means and each model minus the base with its 95% paired
interval over prompts (`metrics.json`'s `results` and `vs_base`). Below, one block a prompt: the
models side by side (one column a model, one row a seed), each sample looping muted, all of a
block restarted together by its play button and kept in step while they play; beside each model
its metrics for that prompt (`per_prompt`) and, where a VLM judged them, its verdicts against the
base. Videos are referenced beside the page (`<model>/<file>`), nothing is fetched from elsewhere.
Every number is written with its exact value in `data-value`, so a reader (or a test) can check
the page against `metrics.json`.
"""
from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

REPORT = "report.html"

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 24px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.prompt { margin: 28px 0; border-top: 2px solid #888; padding-top: 8px; }
.grid { display: grid; gap: 8px; align-items: start; }
.cell video, .cell img { width: 100%; image-rendering: pixelated; background: #000; }
.model { font-weight: 600; }
.above { color: #0a6b2b; } .below { color: #a11; }
"""

_SCRIPT = """
document.querySelectorAll('.prompt').forEach(block => {
  const videos = [...block.querySelectorAll('video')];
  block.querySelector('button').addEventListener('click', () => {
    videos.forEach(v => { v.currentTime = 0; v.play(); });
  });
  if (videos.length) videos[0].addEventListener('timeupdate', () => {
    const t = videos[0].currentTime;
    videos.slice(1).forEach(v => { if (Math.abs(v.currentTime - t) > 0.1) v.currentTime = t; });
  });
});
document.body.dataset.ready = '1';
"""


def _number(value: Any, signed: bool = False) -> str:
  if value is None:
    return "<td>-</td>"
  text = f"{value:+.3f}" if signed else f"{value:.3f}"
  return f'<td data-value="{float(value)!r}">{text}</td>'


def _media(path: str) -> str:
  src = html.escape(quote(path))
  if path.lower().endswith(".gif"):
    return f'<img src="{src}" alt="{src}">'
  return f'<video src="{src}" muted loop playsinline preload="auto"></video>'


def summary_table(metrics: dict, columns: list[str]) -> str:
  """Means per model, then model minus base with `[lo, hi]`."""
  results, vs_base = metrics["results"], metrics.get("vs_base") or {}
  base = next(iter(results), "")
  rows = ["<tr><th>model</th>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"]
  for name, values in results.items():
    rows.append(f'<tr data-model="{html.escape(name)}"><td>{html.escape(name)}</td>'
                + "".join(_number(values.get(c)) for c in columns) + "</tr>")
  for name, diffs in vs_base.items():
    cells = []
    for c in columns:
      d = diffs.get(c)
      if d is None:
        cells.append("<td>-</td>")
        continue
      side = "above" if d["lo"] > 0 else "below" if d["hi"] < 0 else ""
      cells.append(f'<td class="{side}" data-value="{d["diff"]!r}" data-lo="{d["lo"]!r}" '
                   f'data-hi="{d["hi"]!r}">{d["diff"]:+.3f} [{d["lo"]:+.3f}, {d["hi"]:+.3f}]</td>')
    rows.append(f'<tr data-diff="{html.escape(name)}"><td>{html.escape(name)} - '
                f'{html.escape(base)}</td>' + "".join(cells) + "</tr>")
  return "<table id=\"summary\">" + "".join(rows) + "</table>"


def vlm_table(metrics: dict) -> str:
  """The VLM's win / tie / loss rates of each model against the base, with intervals."""
  vlm = (metrics.get("vlm") or {}).get("models") or {}
  if not vlm:
    return ""
  rows = ["<tr><th>VLM: model vs base</th><th>unit</th><th>win</th><th>tie</th><th>loss</th></tr>"]
  for name, result in vlm.items():
    for mode in ("whole", "segment"):
      cells = "".join(f'<td data-value="{r["mean"]!r}">{r["mean"]:.3f} [{r["lo"]:.3f}, '
                      f'{r["hi"]:.3f}]</td>' for r in (result[mode][k] for k in ("win", "tie", "loss")))
      unit = "whole clips" if mode == "whole" else "segments"
      rows.append(f'<tr data-vlm="{html.escape(name)}" data-mode="{mode}"><td>{html.escape(name)}'
                  f"</td><td>{unit}</td>{cells}</tr>")
  return '<table id="vlm">' + "".join(rows) + "</table>"


def prompt_blocks(metrics: dict, files: dict[str, list[dict]], columns: list[str],
                  verdicts: dict | None = None) -> str:
  """One block a prompt: models as columns, seeds as rows; per-prompt metrics under each model."""
  models = list(files)
  seeds = int(metrics["seeds_per_prompt"])
  per_prompt = metrics.get("per_prompt") or {}
  blocks = []
  for p in range(int(metrics["num_prompts"])):
    prompt = files[models[0]][p * seeds]["prompt"]
    grid = [f'<div class="model">{html.escape(m)}</div>' for m in models]
    for s in range(seeds):
      grid += [f'<div class="cell">{_media(m + "/" + files[m][p * seeds + s]["file"])}</div>'
               for m in models]
    tables = []
    for m in models:
      rows = "".join(f"<tr><td>{html.escape(c)}</td>{_number(per_prompt[m][c][p])}</tr>"
                     for c in columns if c in per_prompt.get(m, {}))
      for verdict in (verdicts or {}).get(m, {}).get(prompt, []):
        rows += f"<tr><td>VLM vs base</td><td>{html.escape(str(verdict))}</td></tr>"
      tables.append(f'<div><table data-model="{html.escape(m)}" data-prompt="{p}">{rows}'
                    "</table></div>")
    style = f"grid-template-columns: repeat({len(models)}, minmax(120px, 320px))"
    blocks.append(f'<div class="prompt" data-prompt="{p}"><h3>{html.escape(prompt)} '
                  f'<button type="button">play together</button></h3>'
                  f'<div class="grid" style="{style}">{"".join(grid + tables)}</div></div>')
  return "".join(blocks)


def render(metrics: dict, files: dict[str, list[dict]], verdicts: dict | None = None,
           order: tuple[str, ...] = ()) -> str:
  """The page for `metrics` (`metrics.json`) and each model's `prompts.json` listing; metric
  columns in `order`, then any other in name order."""
  present = set().union(*(set(r) for r in metrics["results"].values())) if metrics["results"] else set()
  columns = [c for c in order if c in present] + sorted(present - set(order))
  title = f"Evaluation: {', '.join(files)} on {metrics['num_prompts']} prompts"
  return ("<!doctype html><html><head><meta charset=\"utf-8\">"
          f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
          f"<h1>{html.escape(title)}</h1>"
          f"<p>{metrics['num_prompts']} prompts x {metrics['seeds_per_prompt']} seeds, split "
          f"{html.escape(str(metrics.get('split', '')))}; differences are model minus the first "
          "model with 95% paired bootstrap intervals over prompts (green: above 0, red: below)."
          f"</p>{summary_table(metrics, columns)}{vlm_table(metrics)}"
          f"{prompt_blocks(metrics, files, columns, verdicts)}"
          f"<script>{_SCRIPT}</script></body></html>")


def write_report(eval_dir, models: list[str], verdicts: dict | None = None,
                 order: tuple[str, ...] = ()) -> str:
  """Writes `eval_dir/report.html` from `metrics.json` and each model's `prompts.json`."""
  from densedpo_jax import distributed
  metrics = json.loads((eval_dir / "metrics.json").read_text())
  files = {m: json.loads((eval_dir / m / "prompts.json").read_text()) for m in models}
  expected = [e["prompt"] for e in files[models[0]]]
  for m in models[1:]:
    if [e["prompt"] for e in files[m]] != expected:
      raise ValueError(f"{eval_dir / m / 'prompts.json'}: its prompts differ from "
                       f"{models[0]}'s; the report compares models on the same prompts")
  distributed.write_text(eval_dir / REPORT, render(metrics, files, verdicts, order))
  return str(eval_dir / REPORT)
