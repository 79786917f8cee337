"""The data bridge: MP4 + prompts -> latent records (Wan VAE, umT5) -> training; records -> video.

Tiny random Wan models (tests/tiny_wan.py) and MP4 files written here; no download.
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("av")

from densedpo_jax.data import arrayrecord_io, pipeline  # noqa: E402
from densedpo_jax.training.builders import with_overrides  # noqa: E402
from densedpo_jax.interop import decode_records, encode_videos, video_io  # noqa: E402
from densedpo_jax.interop.wan_encoders import WanEncoders  # noqa: E402
from tests.tiny_wan import build_wan_folder  # noqa: E402

H, W = 32, 48
PROMPTS = ("a red circle moves left", "the dog runs in the park")


def write_clip(path, seconds=1.2, fps=30.0, seed=0):
  """A moving square over a gradient, `seconds` long at `fps`, 48 x 64 (resized by encoding)."""
  rng = np.random.default_rng(seed)
  n = int(round(seconds * fps)) + 1
  y, x = np.mgrid[:48, :64]
  base = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.float32)
  frames = np.repeat(base[None], n, 0)
  colour = rng.uniform(0, 255, 3)
  for i in range(n):
    c = 4 + i
    frames[i, 16:28, c:c + 12] = colour
  return video_io.write_video(str(path), np.clip(frames, 0, 255).astype(np.uint8), fps)


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
  root = tmp_path_factory.mktemp("wan")
  folder = build_wan_folder(str(root / "wan"))
  return folder, WanEncoders(folder)


class Counting:
  """Wraps WanEncoders: counts calls; optionally fails on the n-th `encode_videos` call."""

  def __init__(self, inner, fail_at=None):
    self.inner, self.fail_at = inner, fail_at
    self.temporal_factor, self.spatial_factor = inner.temporal_factor, inner.spatial_factor
    self.latent_channels = inner.latent_channels
    self.encode_calls, self.prompts = 0, []

  def token_lengths(self, prompts):
    return self.inner.token_lengths(prompts)

  def embed_prompts(self, prompts):
    self.prompts += list(prompts)
    return self.inner.embed_prompts(prompts)

  def encode_videos(self, videos):
    self.encode_calls += 1
    if self.encode_calls == self.fail_at:
      raise KeyboardInterrupt("killed")
    return self.inner.encode_videos(videos)


def _manifest(path, lines):
  with open(path, "w") as f:
    for line in lines:
      f.write(json.dumps(line) + "\n")
  return str(path)


def _videos(tmp_path, n=3, seconds=1.2):
  lines = []
  for i in range(n):
    write_clip(tmp_path / f"clip{i}.mp4", seconds=seconds, seed=i)
    lines.append({"id": f"clip{i}", "prompt": PROMPTS[i % 2], "video": f"clip{i}.mp4"})
  return _manifest(tmp_path / "videos.jsonl", lines)


SETTINGS = encode_videos.Settings(num_frames=9, height=H, width=W, fps=16.0, records_per_part=2)


def test_encoded_latents_are_the_normalised_vae_mode_and_decode_back(wan, tmp_path):
  folder, encoders = wan
  counting = Counting(encoders)
  manifest = _videos(tmp_path)
  side = encode_videos.encode_dataset(counting, manifest, str(tmp_path / "out"), "videos", SETTINGS,
                               log=lambda s: None)
  assert side["num_records"] == 3 and side["signature"]["latent_shape"] == [3, H // 8, W // 8, 16]
  assert sorted(counting.prompts) == sorted(PROMPTS)  # Each distinct prompt embedded once.
  records = {r.id: r for r in arrayrecord_io.iter_records(str(tmp_path / "out"), "videos")}
  rec = records["clip1"]
  assert rec.latent.shape == (3, 4, 6, 16)  # 9 frames -> 1 + 8/4 latent frames (causal, r = 4).
  assert rec.latent.dtype.name == "bfloat16" and rec.text_emb.dtype.name == "bfloat16"
  assert rec.num_frames == 9 and rec.fps == 16.0 and rec.temporal_factor == 4 and rec.causal

  # Independent reference: the VAE's mode on the same frames, normalised with the published
  # per-channel mean and std of the VAE config, in float64.
  frames, fps = video_io.read_video(str(tmp_path / "clip1.mp4"))
  clip = video_io.conform(frames, fps, fps=16.0, height=H, width=W, num_frames=9)
  vae = encoders.vae
  with torch.no_grad():
    x = torch.from_numpy(clip[None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    mode = vae.encode(x).latent_dist.mode()[0].permute(1, 2, 3, 0).double().numpy()
  want = (mode - np.asarray(vae.config.latents_mean)) / np.asarray(vae.config.latents_std)
  np.testing.assert_allclose(np.asarray(rec.latent, np.float64), want, rtol=1e-2, atol=1e-2)

  # Text: the umT5 output of the prompt's tokens, cut to its length, zeros after.
  tokens = encoders.tokenizer([PROMPTS[1]], return_tensors="pt")
  n = tokens.input_ids.shape[1]
  with torch.no_grad():
    emb = encoders.text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state[0]
  assert rec.text_mask.tolist() == [True] * n + [False] * (rec.text_mask.size - n)
  np.testing.assert_allclose(np.asarray(rec.text_emb[:n], np.float32), emb.numpy(), rtol=2e-2,
                             atol=2e-2)
  assert not np.asarray(rec.text_emb[n:], np.float32).any()

  index = decode_records.decode_dataset(str(tmp_path / "out"), "videos", str(tmp_path / "decoded"),
                                kind="wan", weights=folder, log=lambda s: None)
  assert [e["id"] for e in index] == ["clip0", "clip1", "clip2"]
  video, fps = video_io.read_video(str(tmp_path / "decoded" / index[1]["files"]["video"]))
  assert video.shape == clip.shape and fps == 16.0  # decode(encode(video)): same frames and size.


def test_pair_labels_reach_the_training_pipeline_as_latent_frame_labels(wan, tmp_path):
  _, encoders = wan
  for i in range(2):
    write_clip(tmp_path / f"m{i}.mp4", seconds=2.2, seed=i)
  manifest = _manifest(tmp_path / "pairs.jsonl", [
      {"id": "p0", "prompt": PROMPTS[0], "video_a": "m0.mp4", "video_b": "m1.mp4",
       "segment_labels": [1, -1, 1], "global_label": 1}])
  settings = encode_videos.Settings(num_frames=33, height=H, width=W, fps=16.0)
  encode_videos.encode_dataset(encoders, manifest, str(tmp_path / "out"), "pairs", settings,
                        log=lambda s: None)
  source = arrayrecord_io.ShardedSource(str(tmp_path / "out"), "pairs")
  batch = next(iter(pipeline.pair_dataset(source, batch_size=1, seed=0, mode="dense",
                                          read_threads=0, prefetch_buffer_size=0)))
  # 1 s segments at 16 fps: frames 0-15, 16-31, 32. Latent frame 0 covers frame 0, frame j >= 1
  # covers 4j-3 .. 4j; frames 13-16 and 29-32 straddle two segments with different labels: ties.
  assert batch["labels"][0].tolist() == [1, 1, 1, 1, 0, -1, -1, -1, 0]
  assert batch["latent_a"].shape == (1, 9, 4, 6, 16)


def test_a_killed_run_resumes_without_duplicates(wan, tmp_path):
  # Encoding writes through data/parts.py (tests/test_parts.py tests it alone).
  _, encoders = wan
  manifest = _videos(tmp_path, n=5)
  out = str(tmp_path / "out")
  with pytest.raises(KeyboardInterrupt):
    encode_videos.encode_dataset(Counting(encoders, fail_at=3), manifest, out, "videos", SETTINGS,
                          batch_size=1, log=lambda s: None)
  assert not os.path.exists(arrayrecord_io.sidecar_path(out, "videos"))  # Not committed.
  resumed = Counting(encoders)
  side = encode_videos.encode_dataset(resumed, manifest, out, "videos", SETTINGS, batch_size=1,
                               log=lambda s: None)
  # Part 0 (clips 0-1) was committed before the kill and is not encoded again.
  assert resumed.encode_calls == 3
  ids = [r.id for r in arrayrecord_io.iter_records(out, "videos")]
  assert side["num_records"] == 5 and sorted(ids) == [f"clip{i}" for i in range(5)]
  with open(manifest, "a") as f:
    f.write(json.dumps({"id": "clip9", "prompt": "a", "video": "clip0.mp4"}) + "\n")
  with pytest.raises(ValueError, match="manifest_sha256"):
    encode_videos.encode_dataset(encoders, manifest, out, "videos", SETTINGS, log=lambda s: None)


def test_bad_videos_and_labels_name_the_manifest_line_and_field(wan, tmp_path):
  _, encoders = wan
  write_clip(tmp_path / "good.mp4")
  (tmp_path / "corrupt.mp4").write_bytes(os.urandom(2000))
  write_clip(tmp_path / "short.mp4", seconds=0.3)
  lines = [{"id": "g", "prompt": PROMPTS[0], "video": "good.mp4"},
           {"id": "c", "prompt": PROMPTS[0], "video": "corrupt.mp4"},
           {"id": "s", "prompt": PROMPTS[1], "video": "short.mp4"},
           {"id": "m", "prompt": PROMPTS[1], "video": "missing.mp4"}]
  manifest = _manifest(tmp_path / "m.jsonl", lines)
  with pytest.raises(encode_videos.ManifestError,
                     match=r"m\.jsonl, line 2, field 'video'.*corrupt\.mp4"):
    encode_videos.encode_dataset(encoders, manifest, str(tmp_path / "a"), "v", SETTINGS,
                                 log=lambda s: None)
  side = encode_videos.encode_dataset(encoders, manifest, str(tmp_path / "b"), "v", SETTINGS,
                               skip_bad=True, log=lambda s: None)
  assert side["num_records"] == 1 and side["metadata"]["skipped"] == 3
  with open(tmp_path / "b" / "v.skipped.jsonl") as f:
    skipped = [json.loads(line) for line in f]
  assert [s["line"] for s in skipped] == [2, 3, 4]
  assert "short.mp4" in skipped[1]["error"] and "missing.mp4" in skipped[2]["error"]

  bad = _manifest(tmp_path / "bad.jsonl", [
      {"id": "p", "prompt": "x", "video_a": "good.mp4", "video_b": "good.mp4",
       "segment_labels": [1, 2]}])
  with pytest.raises(encode_videos.ManifestError, match=r"line 1, field 'segment_labels'"):
    encode_videos.encode_dataset(encoders, bad, str(tmp_path / "c"), "p", SETTINGS,
                                 log=lambda s: None)
  (tmp_path / "latin1.jsonl").write_bytes(
      json.dumps(lines[0]).encode() + b"\n" + b'{"id": "d\xe9j\xe0", "prompt": "x", "video": "good.mp4"}\n')
  with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9 at column 10\)"):
    encode_videos.read_manifest(str(tmp_path / "latin1.jsonl"))
  for n, text in enumerate(("[1, 2]", "[" * 60000), start=1):  # Not an object; nesting too deep.
    (tmp_path / "odd.jsonl").write_text(text + "\n")
    with pytest.raises(encode_videos.ManifestError, match=r"odd\.jsonl, line 1, field '<json>'"):
      encode_videos.read_manifest(str(tmp_path / "odd.jsonl"))
  bad = _manifest(tmp_path / "bad2.jsonl", [
      {"id": "p", "prompt": "x", "video_a": "good.mp4", "video_b": "good.mp4",
       "segment_labels": [1, 0, 1, 1]}])  # 9 frames of 16-frame segments: 1 segment, not 4.
  with pytest.raises(encode_videos.ManifestError, match=r"line 1, field 'segment_labels'"):
    encode_videos.encode_dataset(encoders, bad, str(tmp_path / "d"), "p", SETTINGS,
                                 log=lambda s: None)


def test_the_command_checks_every_input_before_any_model_loads(wan, tmp_path):
  """Wrong weights, a bad manifest line, impossible sizes: one line each, in well under a second
  (no model loads, no hub is asked for a wrong local path)."""
  import time
  folder, _ = wan
  write_clip(tmp_path / "good.mp4")
  good = _manifest(tmp_path / "good.jsonl", [{"id": "a", "prompt": PROMPTS[0], "video": "good.mp4"}])
  bad = _manifest(tmp_path / "bad.jsonl", [{"id": "a", "prompt": PROMPTS[0], "video": "good.mp4",
                                            "colour": "red"}])
  base = ["--out", str(tmp_path / "out"), "--name", "v", "--num_frames=9", f"--height={H}",
          f"--width={W}", "--fps=16"]
  cases = [([f"--weights={tmp_path / 'nowhere'}", f"--manifest={good}"],
            rf"error: --weights={tmp_path / 'nowhere'}: no such folder"),
           ([f"--weights={tmp_path}", f"--manifest={good}"], r"no vae/, text_encoder/, tokenizer/ in it"),
           ([f"--weights={folder}", f"--manifest={bad}"], r"bad\.jsonl, line 1, field 'colour'"),
           ([f"--weights={folder}", f"--manifest={good}", "--num_frames=10"], r"--num_frames=10")]
  for args, want in cases:
    start = time.monotonic()
    with pytest.raises(SystemExit, match=want):
      encode_videos.main(base + args)
    assert time.monotonic() - start < 5.0
  assert not os.path.exists(tmp_path / "out")


def test_the_wan22_vae_encodes_48_channels_at_16x_and_decodes_back(tmp_path):
  """The Wan 2.2 VAE (TI2V-5B): records carry its normalised 48-channel latents at 1/16 of the
  frame size; frame sizes must be multiples of 32 (16x compression times the patch), said
  before any model loads; decode(encode(video)) keeps frames and size."""
  folder = build_wan_folder(str(tmp_path / "wan22"), vae="2.2")
  manifest = _videos(tmp_path, n=1)
  base = ["--out", str(tmp_path / "out22"), "--name", "v", "--num_frames=9", "--fps=16",
          f"--weights={folder}", f"--manifest={manifest}"]
  with pytest.raises(SystemExit, match=r"--height=32 --width=48: must be multiples of 32"):
    encode_videos.main(base + ["--height=32", "--width=48"])
  with pytest.raises(SystemExit, match=r"--model=wan2.1, but .*/vae is the wan2.2 VAE \(48"):
    encode_videos.main(base + ["--height=32", "--width=64", "--model=wan2.1"])
  encode_videos.main(base + ["--height=32", "--width=64", "--model=wan2.2"])
  side = arrayrecord_io.read_sidecar(str(tmp_path / "out22"), "v")
  assert side["signature"]["latent_shape"] == [3, 2, 4, 48]
  assert side["metadata"]["model"] == "wan2.2"
  rec = next(arrayrecord_io.iter_records(str(tmp_path / "out22"), "v"))

  # Independent reference: the VAE's mode, normalised by its config's 48 means and stds (float64).
  frames, fps = video_io.read_video(str(tmp_path / "clip0.mp4"))
  clip = video_io.conform(frames, fps, fps=16.0, height=32, width=64, num_frames=9)
  vae = WanEncoders(folder, text=False).vae
  with torch.no_grad():
    x = torch.from_numpy(clip[None]).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    mode = vae.encode(x).latent_dist.mode()[0].permute(1, 2, 3, 0).double().numpy()
  want = (mode - np.asarray(vae.config.latents_mean)) / np.asarray(vae.config.latents_std)
  # bfloat16 storage: 8 significant bits, a relative error of at most 2^-8 of each value.
  np.testing.assert_allclose(np.asarray(rec.latent, np.float64), want, rtol=2 ** -8, atol=1e-6)

  index = decode_records.decode_dataset(str(tmp_path / "out22"), "v", str(tmp_path / "dec22"),
                                        kind="wan", weights=folder, log=lambda s: None)
  video, fps = video_io.read_video(str(tmp_path / "dec22" / index[0]["files"]["video"]))
  assert video.shape == clip.shape and fps == 16.0


@pytest.mark.e2e
def test_the_whole_real_model_path(wan, tmp_path):
  """encode -> task=pairs -> labels from a JSONL file (task=label) -> DenseDPO -> task=evaluate,
  each through the Wan 1.3B recipe configs (`:wan1.3b`) as the docs run them: only paths and
  tiny sizes are set, never the model's shape (it comes from the folder)."""
  from configs import dense, evaluate as evaluate_config, label as label_config, pairs as pairs_config
  from densedpo_jax.tasks import evaluate, pairs
  from densedpo_jax.training import train
  from densedpo_jax.labeling import task as label_task
  folder, encoders = wan
  lines = []
  for i in range(4):
    write_clip(tmp_path / f"v{i}.mp4", seconds=1.2, seed=i)
    lines.append({"id": f"v{i}", "prompt": PROMPTS[i % 2], "video": f"v{i}.mp4"})
  settings = encode_videos.Settings(num_frames=17, height=H, width=W, fps=16.0)
  encode_videos.encode_dataset(encoders, _manifest(tmp_path / "v.jsonl", lines),
                               str(tmp_path / "data"), "videos", settings, log=lambda s: None)
  tiny_text = {"model.text_len": 8}  # The tiny tokenizer's length; the real one is the preset's.

  c = with_overrides(pairs_config.get_config("wan1.3b"), init_from=os.path.join(folder, "transformer"),
                     **{"decoder.weights": folder, "data.path": str(tmp_path / "data"),
                        "pairs.out_dir": str(tmp_path / "pairs"), "data.read_threads": 0,
                        "pairs.num_pairs": 4, "pairs.pairs_per_part": 2, "pairs.batch_size": 2,
                        "pairs.num_steps": 4, "pairs.eta_range": (0.5, 0.5), **tiny_text})
  assert pairs.main(c)["num_records"] == 4
  with open(tmp_path / "pairs" / "pairs_videos" / "index.jsonl") as f:
    index = [json.loads(line) for line in f]
  pair_video, _ = video_io.read_video(str(tmp_path / "pairs" / "pairs_videos" / index[0]["files"]["pair"]))
  assert pair_video.shape == (17, H, 2 * W + 4, 3)  # a | gap | b

  labels = tmp_path / "labels.jsonl"
  labels.write_text("".join(json.dumps({"id": e["id"], "segment_labels": [1, -1]}) + "\n"
                            for e in index))
  c = label_config.get_config("jsonl")
  c.label.update(file=str(labels), in_dir=str(tmp_path / "pairs"), in_name="pairs",
                 out_dir=str(tmp_path / "pairs"), out_name="labeled")
  assert label_task.main(c)["labeled"] == 4

  c = with_overrides(dense.get_config("wan1.3b"), init_from=os.path.join(folder, "transformer"),
                     total_steps=3, log_every=1, **{
                         "data.path": str(tmp_path / "pairs"), "data.name": "labeled",
                         "data.batch_size": 4, "optim.accum_steps": 1, "data.read_threads": 0,
                         "mesh.num_devices": 1, "optim.warmup_steps": 1, **tiny_text})
  history = train.train_and_evaluate(c, str(tmp_path / "dense"))
  # Step 1 runs at the warm-up's first rate, 0: log 2 (policy == reference). With a 1-step
  # warm-up step 2 runs at the full rate, so step 3's policy differs from the reference.
  assert abs(history[1]["loss"] - np.log(2)) < 1e-3 and history[3]["loss"] != history[1]["loss"]

  c = with_overrides(evaluate_config.get_config("wan1.3b"), **{
      "decoder.weights": folder, "data.path": str(tmp_path / "data"), "data.read_threads": 0,
      "evaluate.models": f"base={folder}/transformer,dense={tmp_path / 'dense'}",
      "evaluate.max_prompts": 2, "evaluate.seeds_per_prompt": 1, "evaluate.num_steps": 4,
      "evaluate.batch_size": 2, **tiny_text})
  evaluate.main(c, str(tmp_path / "eval"))
  for name in ("base", "dense"):
    sample, fps = video_io.read_video(str(tmp_path / "eval" / "eval" / name / "sample_00001.mp4"))
    assert sample.shape == (17, H, W, 3) and fps == 16.0
  # The recipe's judge scores the decoded videos and compares the adapted model to the base.
  metrics = json.load(open(tmp_path / "eval" / "eval" / "metrics.json"))
  assert set(metrics["vs_base"]["dense"]) >= {"motion_px_per_frame", "dynamic_degree"}
  assert metrics["results"]["base"]["temporal_flickering"] > 0


def test_file_names_of_ids_are_unique():
  names = {decode_records.safe_name(i) for i in ("a/b", "a_b", "a:b", "clip1", "../x")}
  assert len(names) == 5 and decode_records.safe_name("clip1") == "clip1"
  assert all("/" not in n and not n.startswith(".") for n in names)
