"""The VLM judge of an evaluation (densedpo_jax/tasks/vlm_judge.py) against scripted Chat
Completions servers on 127.0.0.1: known answers, a positional bias, the cache, the dry run."""
import json

import numpy as np
import pytest

pytest.importorskip("openai")
pytest.importorskip("cv2")

from configs import evaluate as evaluate_config  # noqa: E402
from densedpo_jax.interop import video_io  # noqa: E402
from densedpo_jax.tasks import vlm_judge  # noqa: E402
from tests.vlm_server import Server  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green star", "a cyan ring"]
SEEDS, FRAMES, FPS, PER = 2, 8, 8.0, 4  # 8 frames at 8 fps, 4-frame segments: 2 segments.
# The tuned model's brightness against the base's, per prompt: brighter wins (the server says).
SHIFT = [40, 40, -40, 0]


def _eval_dir(tmp_path):
  """eval/base and eval/tuned as task=evaluate writes them (MP4 samples and prompts.json)."""
  rng = np.random.default_rng(0)
  root = tmp_path / "eval"
  listings = {"base": [], "tuned": []}
  for p, prompt in enumerate(PROMPTS):
    for s in range(SEEDS):
      base = rng.integers(60, 120, size=(FRAMES, 32, 32, 3)).astype(np.uint8)
      for name, video in (("base", base), ("tuned", np.clip(base.astype(int) + SHIFT[p], 0, 255)
                                                      .astype(np.uint8))):
        (root / name).mkdir(parents=True, exist_ok=True)
        file = f"sample_{p * SEEDS + s:05d}.mp4"
        video_io.write_video(str(root / name / file), video, FPS)
        listings[name].append({"file": file, "prompt": prompt})
  for name, listing in listings.items():
    (root / name / "prompts.json").write_text(json.dumps(listing))
  return root


def _brighter(first_marked, second_marked, body):
  first, second = Server.blocks(body)
  a, b = np.mean(first), np.mean(second)
  return "tie" if abs(a - b) < 10 else ("first" if a > b else "second")


def _spec(url, **kw):
  spec = evaluate_config.get_config().evaluate.vlm
  spec.update(base_url=url, model="scripted-vl", max_side=64, timeout_s=5.0, max_retries=1,
              retry_backoff_s=0.01, api_key_env="DENSEDPO_TEST_NO_KEY", enabled=True, **kw)
  return spec


def test_known_answers_give_known_rates_and_a_rerun_pays_nothing(vlm_server, tmp_path):
  root = _eval_dir(tmp_path)
  s = vlm_server(policy=_brighter, delay=0.05)
  lines = []
  out = vlm_judge.judge(root, ["base", "tuned"], _spec(s.url, concurrency=4), SEEDS, FPS, PER,
                        log=lines.append)
  # 8 samples x (2 whole + 2 x 2 segment questions) = 48 calls, announced before any was made;
  # a whole question shows 2 x 8 frames, a segment one 2 x 4.
  images = 8 * (2 * 16 + 4 * 8)
  assert out["calls"] == {"questions": 48, "cached": 0, "calls": 48, "images": images,
                          "estimated_tokens": images * 765 + 48 * vlm_judge.TEXT_TOKENS}
  assert lines[0].startswith("vlm judge: 48 questions, 0 cached: 48 calls")
  assert len(s.bodies) == 48
  assert s.max_inflight == 4  # The concurrency, across samples (whole mode: 2 questions each).
  whole, segment = out["models"]["tuned"]["whole"], out["models"]["tuned"]["segment"]
  # Prompts 0 and 1 win, 2 loses, 3 ties, on every seed and segment.
  for rates in (whole, segment):
    assert (rates["win"]["mean"], rates["tie"]["mean"], rates["loss"]["mean"]) == (0.5, 0.25, 0.25)
    assert rates["win"]["lo"] <= 0.5 <= rates["win"]["hi"]
  assert out["models"]["tuned"]["verdicts"]["a green star"][0] == "seed 0: loss"
  assert "seed 1: segments win win" in out["models"]["tuned"]["verdicts"]["a red circle"]
  again = vlm_judge.judge(root, ["base", "tuned"], _spec(s.url), SEEDS, FPS, PER,
                          log=lines.append)
  assert len(s.bodies) == 48 and again["calls"]["cached"] == 48  # The cache pays no call twice.
  assert again["models"]["tuned"]["whole"] == whole


def test_a_positional_bias_becomes_ties_and_a_dry_run_asks_nothing(vlm_server, tmp_path):
  root = _eval_dir(tmp_path)
  dry = vlm_server(policy=lambda *_: "first")
  counts = vlm_judge.judge(root, ["base", "tuned"], _spec(dry.url, dry_run=True,
                                                          usd_per_million_tokens=2.5),
                           SEEDS, FPS, PER, log=lambda line: None)
  assert counts == {"calls": dict(counts["calls"], calls=48)} and dry.bodies == []
  out = vlm_judge.judge(root, ["base", "tuned"], _spec(dry.url), SEEDS, FPS, PER,
                        log=lambda line: None)
  for mode in ("whole", "segment"):
    assert out["models"]["tuned"][mode]["tie"]["mean"] == 1.0  # "first" in both orders: no agreement.
  assert out["stats"]["disagreements"] == 8 + 16  # Every whole-clip and segment question.


def test_mismatched_prompts_are_named(vlm_server, tmp_path):
  root = _eval_dir(tmp_path)
  listing = json.loads((root / "tuned" / "prompts.json").read_text())
  listing[3]["prompt"] = "something else"
  (root / "tuned" / "prompts.json").write_text(json.dumps(listing))
  s = vlm_server()
  with pytest.raises(ValueError, match=r"tuned/prompts.json: its prompts differ from base's"):
    vlm_judge.judge(root, ["base", "tuned"], _spec(s.url), SEEDS, FPS, PER, log=lambda line: None)


@pytest.mark.e2e
def test_task_evaluate_asks_the_vlm_and_the_report_shows_its_verdicts(vlm_server, tmp_path):
  """config.evaluate.vlm.enabled: metrics.json carries the rates, report.html the VLM table and
  each sample's verdicts (two evaluations of one run: identical samples, every verdict a tie)."""
  from densedpo_jax.tasks import evaluate
  from densedpo_jax.training import train
  from tests.helpers import tiny_config, write_videos
  videos = write_videos(str(tmp_path / "videos"), n=5)
  config = tiny_config("flow_matching", videos, total_steps=1, **{"optim.lr": 0.0})
  train.train_and_evaluate(config, str(tmp_path / "run"))
  s = vlm_server(policy=lambda *_: "tie")
  c = evaluate_config.get_config()
  c.model, c.lora = config.model, config.lora
  c.data.kind, c.data.path, c.data.name = "videos", videos, "videos"
  c.evaluate.update(models=f"base={tmp_path / 'run'},same={tmp_path / 'run'}", judge="video",
                    seeds_per_prompt=2, num_steps=2, batch_size=4, max_prompts=2)
  c.evaluate.vlm = _spec(s.url)
  evaluate.main(c, str(tmp_path / "out"))
  metrics = json.loads((tmp_path / "out" / "eval" / "metrics.json").read_text())
  assert metrics["vlm"]["models"]["same"]["whole"]["tie"] == {"mean": 1.0, "lo": 1.0, "hi": 1.0}
  assert metrics["vlm"]["calls"]["calls"] == len(s.bodies) > 0
  page = (tmp_path / "out" / "eval" / "report.html").read_text()
  assert 'id="vlm"' in page and "seed 1: tie" in page
