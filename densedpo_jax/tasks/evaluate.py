"""Evaluation (task=evaluate): sample models on a prompt split, score them, write a table.

For each model (`config.evaluate.models = "name=path,name=path"`, each path a run's workdir or
checkpoint holding exported weights), sample every distinct prompt of `config.data.split` with
`seeds_per_prompt` seeds, then
  judge='shapesworld'  score with the ShapesWorld judge (visual quality, temporal consistency,
                       dynamic degree, fast share, mean speed, text alignment, artifact share);
  judge='video'        score the decoded pixels of any model with `metrics.temporal` (optical-flow
                       motion, VBench's dynamic degree and temporal flickering, warping error;
                       the `[metrics]` extra) and export them as with 'none';
  judge='none'         no scores: export the samples for an external evaluator (e.g. VBench):
                       `<model>/sample_<k>.<format>` decoded files (with `config.decoder`), else
                       `<model>/samples.npy` `[N, T, H, W, C]` latents and one GIF a sample; and
                       `<model>/prompts.json`.
Writes `<workdir>/eval/metrics.json` (means; each prompt's means under `per_prompt`; under
`vs_base` each model minus the first, the base, per metric with a paired bootstrap interval over
prompts), `table.md`, a preview grid `<model>.{png,gif}`, every sample under `<model>/` and
`report.html` (tasks/eval_report.py): the models side by side, prompt by prompt.
On several processes each samples every `process_count`-th batch and all of them join the
samples (each sample's noise comes from its own key, so they equal one process's); every
process scores them, and process 0 alone writes.
"""
from __future__ import annotations

import importlib.util
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from densedpo_jax import distributed, previews
from densedpo_jax.metrics.bootstrap import compare_to_base
from densedpo_jax.model import conditioning
from densedpo_jax.objectives import sampling
from densedpo_jax.tasks import eval_report
from densedpo_jax.training.builders import make_source, model_config, with_overrides
from densedpo_jax.data import arrayrecord_io

METRICS = ("visual_quality", "temporal_consistency", "dynamic_degree", "fast_share", "mean_speed",
           "text_alignment", "artifact_share", "off_palette", "background_noise")  # The ShapesWorld judge's.
# The table's and report's column order: the ShapesWorld judge's, then judge='video''s
# (metrics/temporal.py METRICS, named here so that this module needs no OpenCV).
COLUMNS = METRICS + ("motion_px_per_frame", "peak_motion_px_per_frame", "temporal_flickering",
                     "warping_error", "occluded_share")
JUDGES = ("shapesworld", "video", "none")


def parse_models(spec: str) -> dict[str, str]:
  """`"base=workdirs/pretrain,dense=workdirs/dense"` -> `{name: path}`."""
  models = {}
  for item in filter(None, (s.strip() for s in spec.split(","))):
    name, sep, path = item.partition("=")
    if not sep or not name or not path:
      raise ValueError(f"config.evaluate.models: {item!r} is not name=path")
    models[name] = path
  if not models:
    raise ValueError("config.evaluate.models is empty: expected 'name=path,...'")
  return models


def prompt_set(source, max_prompts: int) -> list:
  """The first video record of each distinct prompt, in source order (at most `max_prompts`)."""
  seen, records = set(), []
  for i in range(len(source)):
    rec = arrayrecord_io.decode_raw(source[i])
    if rec.prompt not in seen:
      seen.add(rec.prompt)
      records.append(rec)
      if len(records) == max_prompts:
        break
  return records


def sample_model(params, records, spec, cfg) -> np.ndarray:
  """`seeds_per_prompt` samples of each record's prompt: `[P * S, T, H, W, C]` (prompt-major),
  batches split over the processes (`distributed.my_items`) and joined on every process."""
  shape = tuple(records[0].latent.shape)
  run = sampling.make_video_sampler(cfg, shape, spec.num_steps, spec.cfg_scale)
  reps = spec.seeds_per_prompt
  text = np.repeat(np.stack([r.text_emb for r in records]).astype(np.float32), reps, axis=0)
  mask = np.repeat(np.stack([np.asarray(r.text_mask, bool) for r in records]), reps, axis=0)
  cond = conditioning.from_records(records, cfg, reps)  # Image-to-video: each prompt's frame.
  n, size = len(text), spec.batch_size
  keys = jax.random.split(jax.random.key(spec.seed), n)
  num_batches, mine = -(-n // size), {}
  for b in distributed.my_items(num_batches):
    sl = slice(b * size, (b + 1) * size)
    part = None if cond is None else jax.tree_util.tree_map(lambda a: a[sl], cond)
    videos = np.asarray(run(params, keys[sl], text[sl], mask[sl], part), np.float32)
    mine[b] = np.concatenate([videos, np.zeros((size - len(videos),) + shape, np.float32)])
  videos = distributed.join_items(mine, num_batches, (size,) + shape, np.float32)
  return videos.reshape((-1,) + shape)[:n]  # The last batch's zero rows dropped.


def markdown_table(results: dict[str, dict[str, float]], vs_base: dict | None = None) -> str:
  """Each model's means, then each model minus the base with its 95% interval over prompts."""
  cols = [m for m in COLUMNS if any(m in r for r in results.values())]
  cell = lambda v: "-" if v is None else f"{v:.3f}"
  lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
  for name, r in results.items():
    lines.append(f"| {name} | " + " | ".join(cell(r.get(c)) for c in cols) + " |")
  base = next(iter(results), "")
  for name, rows in (vs_base or {}).items():
    lines.append(f"| {name} - {base} | " + " | ".join(
        f"{rows[c]['diff']:+.3f} [{rows[c]['lo']:+.3f}, {rows[c]['hi']:+.3f}]" if c in rows
        else "-" for c in cols) + " |")
  return "\n".join(lines)


def check_pixels(config: ml_collections.ConfigDict, latent_channels: int, what: str) -> None:
  """Pixels are RGB records (ShapesWorld: the latent is the video) or latents with a decoder."""
  if config.decoder.kind == "none" and latent_channels != 3:
    raise ValueError(f"config.{what} pixels, but the records hold {latent_channels}-channel "
                     "latents: set config.decoder.kind (e.g. 'wan' with config.decoder.weights) "
                     "to decode them")


def check_video_judge(config: ml_collections.ConfigDict, latent_channels: int) -> None:
  """judge='video' scores pixels and needs OpenCV. Checked before any model loads."""
  check_pixels(config, latent_channels, "evaluate.judge='video' scores")
  if importlib.util.find_spec("cv2") is None:
    raise ValueError("config.evaluate.judge='video' needs OpenCV: pip install -e \".[metrics]\"")


def video_scores(frames: np.ndarray, fps: float, seeds_per_prompt: int, name: str):
  """`(means {metric}, per-prompt means {metric: [P]})` of `metrics.temporal` over uint8 RGB
  `frames [N, T, H, W, 3]` (prompt-major, `seeds_per_prompt` samples a prompt)."""
  from densedpo_jax.metrics import temporal
  start, rows = time.time(), []
  for k, video in enumerate(frames):
    rows.append(temporal.video_metrics(video, fps))
    if (k + 1) % 50 == 0:
      rate = (time.time() - start) / (k + 1)
      logging.info("evaluate: %s: %d/%d samples scored, ETA %.0f s", name, k + 1, len(frames),
                   rate * (len(frames) - k - 1))
  def mean(rs, m):  # None where no sample has the metric (a warping error with nothing visible).
    values = [r[m] for r in rs if r[m] is not None]
    return float(np.mean(values)) if values else None
  groups = [rows[i:i + seeds_per_prompt] for i in range(0, len(rows), seeds_per_prompt)]
  return ({m: mean(rows, m) for m in temporal.METRICS},
          {m: [mean(g, m) for g in groups] for m in temporal.METRICS})


def evaluate_models(config: ml_collections.ConfigDict, workdir: str, source, cfg) -> dict:
  """Samples and scores every model of `config.evaluate.models`; writes files; returns metrics."""
  spec = config.evaluate
  if spec.judge not in JUDGES:
    raise ValueError(f"config.evaluate.judge={spec.judge!r}; expected one of {JUDGES}")
  models = parse_models(spec.models)
  records = prompt_set(source, spec.max_prompts)
  if spec.get("export", ""):
    if spec.export != "vbench":
      raise ValueError(f"config.evaluate.export={spec.export!r}; expected '' or 'vbench'")
    check_pixels(config, records[0].latent.shape[-1], "evaluate.export='vbench' writes videos")
  if spec.judge == "video":
    check_video_judge(config, records[0].latent.shape[-1])
  use_vlm = bool(spec.get("vlm") and spec.vlm.enabled)
  if use_vlm:  # Checked before any model loads: the judge runs after every model sampled.
    if len(models) < 2:
      raise ValueError("config.evaluate.vlm.enabled: the VLM compares each model with the first; "
                       f"config.evaluate.models lists {len(models)}")
    check_pixels(config, records[0].latent.shape[-1], "evaluate.vlm.enabled judges")
    for module, extra in (("openai", "vlm"), ("cv2", "metrics")):
      if importlib.util.find_spec(module) is None:
        raise ValueError(f"config.evaluate.vlm.enabled needs the [{extra}] extra (module "
                         f"{module!r}): pip install -e \".[{extra}]\"")
  prompts = [r.prompt for r in records for _ in range(spec.seeds_per_prompt)]
  out_dir, write = distributed.path(workdir) / "eval", distributed.is_main()
  results, buckets, per_prompt = {}, {}, {}
  decoder = None
  if config.decoder.kind != "none":  # Latents -> pixels (only when asked: it may load PyTorch).
    from densedpo_jax.interop import decode_records
    decoder = decode_records.make_decoder(config.decoder.kind, config.decoder.weights)
  for name, path in models.items():
    start = time.time()
    params = sampling.load_exported_params(path, cfg)
    videos = sample_model(params, records, spec, cfg)
    if decoder is not None:
      pixels = np.concatenate([decoder(videos[i:i + spec.batch_size])
                               for i in range(0, len(videos), spec.batch_size)])
      videos = pixels.astype(np.float32) / 127.5 - 1.0  # The pixel convention of previews.
    first = videos[::spec.seeds_per_prompt][:spec.preview_prompts]
    captions = [f"{name}: {r.prompt}" for r in records[:len(first)]]
    if spec.judge == "shapesworld":
      from densedpo_jax.shapesworld import judge  # Only ShapesWorld has a pixel judge.
      scores = judge.judge_videos(videos, prompts, spec.frames_per_segment)
      results[name] = judge.aggregate(scores)
      per_prompt[name] = prompt_means(scores, spec.seeds_per_prompt)
      buckets[name] = judge.speed_buckets(scores, buckets=3)
      captions = [f"{c} | quality {s.visual_quality:.2f}, speed {s.mean_speed:.2f} px/frame"
                  for c, s in zip(captions, scores[::spec.seeds_per_prompt])]
    if write:
      previews.save_png(str(out_dir / f"{name}.png"), previews.captioned_grid(first, captions))
      previews.save_gif(str(out_dir / f"{name}.gif"), first, fps=records[0].fps)
    if spec.judge == "video":
      frames = pixels if decoder is not None else previews.to_uint8(videos)
      results[name], per_prompt[name] = video_scores(frames, records[0].fps,
                                                     spec.seeds_per_prompt, name)
    if write:  # Every sample as a file: the report page, external evaluators, people.
      export_samples(out_dir / name, pixels if decoder is not None else videos, prompts,
                     records[0].fps, config.decoder.format if decoder is not None else None)
    results.setdefault(name, {})
    if write and spec.get("export", "") == "vbench":  # MP4: VBench's dynamic degree reads no GIF.
      export_vbench(out_dir / "vbench" / name, pixels if decoder is not None else
                    previews.to_uint8(videos), prompts, records[0].fps, "mp4")
    logging.info("evaluate: %s (%s): %d samples in %.0f s %s", name, path, len(videos),
                 time.time() - start, results[name])
  vs_base = compare_to_base(per_prompt) if len(per_prompt) > 1 and len(records) > 1 else {}
  vlm = {}
  if use_vlm:  # Process 0 alone asks (one set of calls, one cache); the others get its result.
    from densedpo_jax.tasks import vlm_judge
    vlm = distributed.on_main(vlm_judge.judge, out_dir, list(models), spec.vlm,
                              spec.seeds_per_prompt, records[0].fps, spec.frames_per_segment)
  if write:
    distributed.write_json(out_dir / "metrics.json", {
        "split": config.data.split, "num_prompts": len(records),
        "seeds_per_prompt": spec.seeds_per_prompt, "results": results,
        "artifacts_by_speed": buckets, "per_prompt": per_prompt, "vs_base": vs_base, "vlm": vlm})
    if spec.judge != "none":
      table = markdown_table(results, vs_base)
      distributed.write_text(out_dir / "table.md", table + "\n")
      print(table)
    verdicts = {m: v["verdicts"] for m, v in vlm.get("models", {}).items()}
    logging.info("evaluate: report page %s",
                 eval_report.write_report(out_dir, list(models), verdicts or None, COLUMNS))
  distributed.barrier("evaluate: written")
  return {name: dict(r, per_prompt=per_prompt[name]) if name in per_prompt else r
          for name, r in results.items()}


def prompt_means(scores, seeds_per_prompt: int) -> dict[str, list[float]]:
  """Each metric of `judge.aggregate` per prompt (over its `seeds_per_prompt` consecutive
  samples): `{metric: [P]}`, what bootstrap intervals over prompts resample."""
  from densedpo_jax.shapesworld import judge
  groups = [scores[i:i + seeds_per_prompt] for i in range(0, len(scores), seeds_per_prompt)]
  means = [judge.aggregate(g) for g in groups]
  return {key: [m[key] for m in means] for key in means[0]}


def export_samples(model_dir, videos: np.ndarray, prompts: list[str], fps: float,
                   video_format: str | None) -> None:
  """Samples for external evaluators: decoded `videos` (uint8 pixels) as `sample_<k>.<format>`
  video files, or (`video_format` None) latents as `samples.npy` `[N, T, H, W, C]` and one GIF
  each; and `prompts.json` (file -> prompt)."""
  files = []
  model_dir.mkdir(parents=True, exist_ok=True)
  if video_format is not None:  # Video files for external evaluators (VBench, people).
    from densedpo_jax.interop import video_io
    for k, video in enumerate(videos):
      files.append(f"sample_{k:05d}.{video_format}")
      video_io.write_video(str(model_dir / files[-1]), video, fps)
  else:
    with (model_dir / "samples.npy").open("wb") as f:
      np.save(f, videos)
    for k, video in enumerate(videos):
      files.append(f"sample_{k:05d}.gif")
      previews.save_gif(str(model_dir / files[-1]), video[None], fps=fps)
  distributed.write_json(model_dir / "prompts.json",
                         [{"file": fn, "prompt": p} for fn, p in zip(files, prompts)])


def main(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The models share one architecture: its shape comes from the first model's weights (or from
  `config.init_from` when set), the run fields (dtype, attention) from the config."""
  first = next(iter(parse_models(config.evaluate.models).values()))
  shaped = config if config.get("init_from") else with_overrides(config, init_from=first)
  return evaluate_models(config, workdir, make_source(config.data), model_config(shaped))


def vbench_name(prompt: str, index: int, fmt: str) -> str:
  """VBench's file name of a prompt's `index`-th video, `{prompt}-{index}.{fmt}` (its custom
  input reads the prompt back from the name); '/' and NUL become '_', cut to 255 bytes."""
  suffix = f"-{index}.{fmt}"
  stem = prompt.replace("/", "_").replace("\0", "_").strip() or "prompt"
  return stem.encode()[:255 - len(suffix.encode())].decode(errors="ignore") + suffix


def export_vbench(model_dir, frames: np.ndarray, prompts: list[str], fps: float, fmt: str) -> None:
  """uint8 RGB `frames [N, T, H, W, 3]` as VBench's custom input: `{prompt}-{i}.{fmt}` (i counts
  each prompt's samples from 0) and `vbench_prompts.json` (file name -> exact prompt, VBench's
  `--prompt_file`, for prompts a file name cannot hold)."""
  from densedpo_jax.interop import video_io
  model_dir.mkdir(parents=True, exist_ok=True)
  for old in model_dir.iterdir():  # An earlier export's files would be videos without a prompt.
    if old.suffix.lower() in (".mp4", ".gif") or old.name == "vbench_prompts.json":
      old.unlink()
  counts, listing = {}, {}
  for video, prompt in zip(frames, prompts):
    index = counts[prompt] = counts.get(prompt, -1) + 1
    name = vbench_name(prompt, index, fmt)
    while name in listing:  # Two prompts that differ only where a file name cannot.
      index += len(prompts)
      name = vbench_name(prompt, index, fmt)
    video_io.write_video(str(model_dir / name), video, fps)
    listing[name] = prompt
  distributed.write_json(model_dir / "vbench_prompts.json", listing)
