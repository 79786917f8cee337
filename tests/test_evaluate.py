"""Evaluation: prompt sets, sampling against a closed form, exported files, the table."""
import json
import os

import jax
import numpy as np
import pytest

from configs import evaluate as evaluate_config
from densedpo_jax.tasks import evaluate
from densedpo_jax.training import train
from densedpo_jax.data import arrayrecord_io
from tests.helpers import C, H, T, W, tiny_config, write_videos


@pytest.fixture(scope="module")
def zero_model(tmp_path_factory):
  """A run whose exported weights are the fresh init (lr 0): it predicts v = 0 exactly."""
  root = tmp_path_factory.mktemp("eval")
  videos = write_videos(str(root / "videos"), n=5)
  config = tiny_config("flow_matching", videos, total_steps=1, **{"optim.lr": 0.0})
  train.train_and_evaluate(config, str(root / "run"))
  return root, videos, config


def test_parse_models():
  assert evaluate.parse_models("base=a/b, dense=c") == {"base": "a/b", "dense": "c"}
  with pytest.raises(ValueError, match="name=path"):
    evaluate.parse_models("base")


def test_markdown_table_lists_models_and_metrics():
  table = evaluate.markdown_table({"base": {"visual_quality": 0.5, "dynamic_degree": 1.0},
                                   "dense": {"visual_quality": 0.25, "dynamic_degree": 0.75}})
  assert table.splitlines() == ["| model | visual_quality | dynamic_degree |", "|---|---|---|",
                                "| base | 0.500 | 1.000 |", "| dense | 0.250 | 0.750 |"]


@pytest.mark.e2e
def test_export_for_external_evaluators(zero_model, tmp_path):
  root, videos, train_config = zero_model
  c = evaluate_config.get_config()
  c.model, c.lora = train_config.model, train_config.lora
  c.data.kind, c.data.path, c.data.name = "videos", videos, "videos"
  c.evaluate.update(models=f"zero={root / 'run'}", judge="none", seeds_per_prompt=2,
                    num_steps=3, batch_size=4, max_prompts=3)
  evaluate.main(c, str(tmp_path))
  out = tmp_path / "eval" / "zero"
  samples = np.load(out / "samples.npy")
  assert samples.shape == (3 * 2, T, H, W, C)
  # v = 0: every sample is its starting noise, drawn from the k-th evaluation key.
  keys = jax.random.split(jax.random.key(c.evaluate.seed), 6)
  for k in range(6):
    want = np.asarray(jax.random.normal(keys[k], (T, H, W, C)))
    np.testing.assert_allclose(samples[k], want, rtol=1e-5, atol=1e-5)
  listing = json.load(open(out / "prompts.json"))
  source = arrayrecord_io.ShardedSource(videos, "videos")
  want_prompts = [r.prompt for r in evaluate.prompt_set(source, 3) for _ in range(2)]
  assert [e["prompt"] for e in listing] == want_prompts
  assert all(os.path.exists(out / e["file"]) for e in listing)
  assert os.path.exists(tmp_path / "eval" / "zero.png")
  assert json.load(open(tmp_path / "eval" / "metrics.json"))["num_prompts"] == 3


def test_markdown_table_lists_differences_to_the_base_with_intervals():
  results = {"base": {"motion_px_per_frame": 1.0}, "dense": {"motion_px_per_frame": 1.25}}
  vs_base = {"dense": {"motion_px_per_frame": {"diff": 0.25, "lo": -0.125, "hi": 0.5}}}
  assert evaluate.markdown_table(results, vs_base).splitlines()[-1] == \
      "| dense - base | +0.250 [-0.125, +0.500] |"


def test_compare_to_base_is_the_paired_bootstrap_of_each_metric():
  from densedpo_jax.metrics.bootstrap import bootstrap_diff, compare_to_base
  rng = np.random.default_rng()
  per_prompt = {m: {"a": list(rng.normal(size=6)), "b": list(rng.normal(size=6))}
                for m in ("base", "dense", "sft")}
  per_prompt["sft"]["c"] = [1.0] * 6  # Not measured on the base: left out.
  out = compare_to_base(per_prompt, num=500, seed=1)
  assert set(out) == {"dense", "sft"} and set(out["sft"]) == {"a", "b"}
  for name in ("dense", "sft"):
    for metric in ("a", "b"):
      want = bootstrap_diff(per_prompt[name][metric], per_prompt["base"][metric], num=500, seed=1)
      assert tuple(out[name][metric].values()) == want
  per_prompt["sft"]["a"] = per_prompt["sft"]["a"][:5]
  with pytest.raises(ValueError, match=r"sft has 5 prompts for 'a', the base base 6"):
    compare_to_base(per_prompt)


@pytest.mark.e2e
def test_the_video_judge_scores_pixels_and_compares_each_model_to_the_base(zero_model, tmp_path):
  """judge='video' on pixel records (ShapesWorld's convention): each model's scores are
  `metrics.temporal` of its exported samples, averaged per prompt over its seeds; a model
  evaluated twice differs from itself by exactly 0."""
  pytest.importorskip("cv2")
  from densedpo_jax import previews
  from densedpo_jax.metrics import temporal
  root, videos, train_config = zero_model
  c = evaluate_config.get_config()
  c.model, c.lora = train_config.model, train_config.lora
  c.data.kind, c.data.path, c.data.name = "videos", videos, "videos"
  c.evaluate.update(models=f"zero={root / 'run'},again={root / 'run'}", judge="video", export="vbench",
                    seeds_per_prompt=2, num_steps=3, batch_size=4, max_prompts=3)
  evaluate.main(c, str(tmp_path))
  metrics = json.load(open(tmp_path / "eval" / "metrics.json"))
  samples = np.load(tmp_path / "eval" / "zero" / "samples.npy")
  fps = arrayrecord_io.ShardedSource(videos, "videos")
  fps = evaluate.prompt_set(fps, 1)[0].fps
  rows = [temporal.video_metrics(previews.to_uint8(v), fps) for v in samples]
  for metric in temporal.METRICS:
    want = [np.mean([r[metric] for r in rows[p * 2:p * 2 + 2]]) for p in range(3)]
    np.testing.assert_allclose(metrics["per_prompt"]["zero"][metric], want, rtol=1e-12)
    assert metrics["results"]["zero"][metric] == pytest.approx(np.mean([r[metric] for r in rows]))
    assert metrics["vs_base"]["again"][metric] == {"diff": 0.0, "lo": 0.0, "hi": 0.0}
  # VBench's custom input: {prompt}-{index}.mp4 and the exact prompts in its --prompt_file.
  from densedpo_jax import video_metrics
  vbench = tmp_path / "eval" / "vbench" / "zero"
  listing = json.load(open(vbench / "vbench_prompts.json"))
  prompts = [r.prompt for r in evaluate.prompt_set(arrayrecord_io.ShardedSource(videos, "videos"), 3)]
  assert sorted(listing) == sorted(evaluate.vbench_name(p, i, "mp4") for p in prompts for i in (0, 1))
  assert all(listing[evaluate.vbench_name(p, i, "mp4")] == p for p in prompts for i in (0, 1))
  frames, _ = video_metrics.read_frames(str(vbench / evaluate.vbench_name(prompts[1], 1, "mp4")))
  assert frames.shape == samples.shape[1:4] + (3,)
  table = (tmp_path / "eval" / "table.md").read_text()
  assert "| again - zero |" in table and "motion_px_per_frame" in table


def test_vbench_names_hold_any_prompt():
  assert evaluate.vbench_name("a red circle moves left", 3, "mp4") == "a red circle moves left-3.mp4"
  assert evaluate.vbench_name("up/down", 0, "gif") == "up_down-0.gif"
  long = evaluate.vbench_name("\u00e9" * 300, 12, "mp4")
  assert len(long.encode()) <= 255 and long.endswith("-12.mp4")


def test_the_video_judge_needs_pixels():
  c = evaluate_config.get_config("wan1.3b")
  assert c.evaluate.judge == "video" and c.decoder.kind == "wan"
  c.decoder.kind = "none"
  with pytest.raises(ValueError, match=r"scores pixels, but the records hold 16-channel latents: "
                                       r"set config.decoder.kind"):
    evaluate.check_video_judge(c, 16)
  evaluate.check_video_judge(c, 3)  # RGB records are the video.


def test_prompt_means_average_each_prompts_consecutive_samples():
  import types
  from densedpo_jax.tasks.evaluate import prompt_means
  from densedpo_jax.shapesworld import judge
  rng = np.random.default_rng()
  keys = ("visual_quality", "temporal_consistency", "mean_speed", "text_alignment", "artifact_share",
          "off_palette", "background_noise")
  values = {k: rng.uniform(0.2, 1.6, size=(3, 2)) for k in keys}  # 3 prompts x 2 samples
  moving = rng.random((3, 2)) < 0.5
  scores = [types.SimpleNamespace(moving=bool(moving[p, s]), **{k: float(values[k][p, s]) for k in keys})
            for p in range(3) for s in range(2)]
  out = prompt_means(scores, 2)
  for k in keys:
    np.testing.assert_allclose(out[k], values[k].mean(axis=1), rtol=1e-12)
  np.testing.assert_allclose(out["dynamic_degree"], moving.mean(axis=1))
  fast = values["mean_speed"] > judge.fast_speed(judge.WorldConfig())
  np.testing.assert_allclose(out["fast_share"], fast.mean(axis=1))


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_the_report_page_plays_every_video_and_shows_metrics_json(zero_model, tmp_path):
  """eval/report.html in Debian's chromium (Playwright, never a downloaded browser): no console
  error, every video element plays, and every number on the page is metrics.json's."""
  pytest.importorskip("cv2")
  playwright = pytest.importorskip("playwright.sync_api")
  root, videos, train_config = zero_model
  c = evaluate_config.get_config()
  c.model, c.lora = train_config.model, train_config.lora
  c.data.kind, c.data.path, c.data.name = "videos", videos, "videos"
  c.decoder.kind = "pixels"  # MP4 files (H.264), as a Wan model's decoded samples.
  c.evaluate.update(models=f"base={root / 'run'},same={root / 'run'}", judge="video",
                    seeds_per_prompt=2, num_steps=3, batch_size=4, max_prompts=3)
  evaluate.main(c, str(tmp_path))
  eval_dir = tmp_path / "eval"
  metrics = json.load(open(eval_dir / "metrics.json"))
  errors = []
  with playwright.sync_playwright() as p:
    context = p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--autoplay-policy=no-user-gesture-required"])
    try:
      page = context.new_page()
      page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
      page.on("pageerror", lambda e: errors.append(str(e)))
      page.goto((eval_dir / "report.html").as_uri())
      page.wait_for_function("document.body.dataset.ready === '1'", timeout=20000)
      num_videos = page.evaluate("document.querySelectorAll('video').length")
      assert num_videos == 2 * 3 * 2  # Models x prompts x seeds.
      page.click(".prompt button")  # "play together" on the first prompt.
      played = page.evaluate("""() => Promise.all([...document.querySelectorAll('video')].map(
          v => v.play().then(() => new Promise(done => {
            const start = v.currentTime;
            const check = () => (v.currentTime !== start || v.ended) ? done(true) : setTimeout(check, 50);
            check();
          })).catch(e => 'failed: ' + e)))""")
      assert played == [True] * num_videos
      summary = page.evaluate("""[...document.querySelectorAll('#summary tr[data-model]')].map(
          r => [r.dataset.model, [...r.querySelectorAll('td[data-value]')].map(
            td => [td.cellIndex, td.dataset.value, td.textContent])])""")
      header = page.evaluate("[...document.querySelectorAll('#summary th')].map(t => t.textContent)")
      diffs = page.evaluate("""[...document.querySelectorAll('#summary tr[data-diff] td[data-value]')]
          .map(td => [td.closest('tr').dataset.diff, td.cellIndex, td.dataset.value,
                      td.dataset.lo, td.dataset.hi])""")
      per_prompt = page.evaluate("""[...document.querySelectorAll('.prompt table')].map(t =>
          [t.dataset.model, +t.dataset.prompt, [...t.rows].filter(r => r.cells[1].dataset.value)
           .map(r => [r.cells[0].textContent, r.cells[1].dataset.value])])""")
    finally:
      context.close()
  assert errors == []
  for model, cells in summary:
    assert len(cells) == len(metrics["results"][model])
    for index, value, text in cells:
      want = metrics["results"][model][header[index]]
      assert float(value) == want and text == f"{want:.3f}"
  assert len(diffs) == len(metrics["vs_base"]["same"])
  for model, index, value, lo, hi in diffs:
    want = metrics["vs_base"][model][header[index]]
    assert (float(value), float(lo), float(hi)) == (want["diff"], want["lo"], want["hi"])
  assert len(per_prompt) == 2 * 3
  for model, prompt, rows in per_prompt:
    for metric, value in rows:
      assert float(value) == metrics["per_prompt"][model][metric][prompt]
