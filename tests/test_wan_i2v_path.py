"""Image-to-video end to end on tiny pipelines written by diffusers: encode with the first frame's
condition -> guided pairs (both members share it) -> labels -> DenseDPO -> export, loaded into
diffusers' `WanImageToVideoPipeline` with equal output; the records' condition checked against
what the pipeline builds from the same frame."""
import json

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from densedpo_jax.data import arrayrecord_io  # noqa: E402
from densedpo_jax.interop import encode_videos, video_io  # noqa: E402
from densedpo_jax.model import conditioning, pretrained  # noqa: E402
from densedpo_jax.training.builders import with_overrides  # noqa: E402
from tests.tiny_wan import build_i2v_pipeline  # noqa: E402

SIZES = {"wan2.1": (32, 48), "ti2v": (32, 64)}
RECIPES = {"wan2.1": "wan2.1-i2v-14b", "ti2v": "wan2.2-ti2v-5b"}  # The docs' config arguments.
NUM_FRAMES = 9
PROMPTS = ("a red circle moves left", "the dog runs in the park")


def _clip(path, seed, height, width):
  """A moving square over a gradient: NUM_FRAMES frames at 16 fps, already the target size."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  base = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.float32)
  frames = np.repeat(base[None], NUM_FRAMES, 0)
  for i in range(NUM_FRAMES):
    frames[i, 8:20, 4 + 2 * i:16 + 2 * i] = rng.uniform(0, 255, 3)
  return video_io.write_video(str(path), np.clip(frames, 0, 255).astype(np.uint8), 16.0)


@pytest.fixture(scope="module", params=sorted(SIZES))
def encoded(request, tmp_path_factory):
  """`(kind, pipeline folder, diffusers pipeline, dataset dir)`: 4 clips encoded with their
  conditions."""
  kind = request.param
  root = tmp_path_factory.mktemp(f"i2v_{kind}")
  pipe = build_i2v_pipeline(str(root / "pipeline"), kind)
  height, width = SIZES[kind]
  lines = []
  for i in range(4):
    _clip(root / f"v{i}.mp4", i, height, width)
    lines.append({"id": f"v{i}", "prompt": PROMPTS[i % 2], "video": f"v{i}.mp4"})
  with open(root / "v.jsonl", "w") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  encode_videos.main([f"--weights={root / 'pipeline'}", f"--manifest={root / 'v.jsonl'}",
                      f"--out={root / 'data'}", "--name=videos", f"--num_frames={NUM_FRAMES}",
                      f"--height={height}", f"--width={width}", "--fps=16",
                      "--condition=first_frame"])
  return kind, str(root / "pipeline"), pipe, str(root / "data")


def test_records_carry_the_condition_the_pipeline_builds(encoded, tmp_path):
  kind, folder, pipe, data = encoded
  height, width = SIZES[kind]
  rec = next(r for r in arrayrecord_io.iter_records(data, "videos") if r.id == "v1")
  from PIL import Image
  frames, fps = video_io.read_video(rec.metadata["video"])
  first = Image.fromarray(frames[0])  # As a user hands the pipeline its image.
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    pixels = pipe.video_processor.preprocess(first, height=height, width=width)
    out = pipe.prepare_latents(pixels, 1, pipe.vae.config.z_dim, height, width, NUM_FRAMES,
                               torch.float32, "cpu", generator, None)
  latent_condition = out[1][:, conditioning.MASK_CHANNELS:] if kind == "wan2.1" else out[1]
  want = latent_condition[0].permute(1, 2, 3, 0).double().numpy()
  # bfloat16 storage (2^-8 relative), and the pipeline's own resampling of the decoded frame.
  np.testing.assert_allclose(np.asarray(rec.cond_latent, np.float64), want, rtol=2 ** -7,
                             atol=2e-2)
  if kind == "wan2.1":
    with torch.no_grad():
      emb = pipe.encode_image(first, "cpu")[0].double().numpy()
    np.testing.assert_allclose(np.asarray(rec.image_emb, np.float64), emb, rtol=2 ** -7, atol=2e-2)
  else:
    assert rec.image_emb is None and rec.cond_latent.shape[0] == 1


@pytest.mark.e2e
def test_pairs_share_the_condition_and_the_trained_adapter_loads_in_diffusers(encoded, tmp_path):
  """The docs' recipe path (models.md), with only paths and tiny sizes set: pairs, labels from a
  JSONL file, DenseDPO, export."""
  from configs import dense, label as label_config, pairs as pairs_config
  from densedpo_jax.interop import export_diffusers
  from densedpo_jax.labeling import task as label_task
  from densedpo_jax.tasks import pairs
  from densedpo_jax.training import train
  kind, folder, pipe, data = encoded
  c = with_overrides(pairs_config.get_config(RECIPES[kind]), init_from=folder, **{
      "decoder.kind": "none", "data.path": data, "pairs.out_dir": str(tmp_path / "pairs"),
      "data.read_threads": 0, "pairs.num_pairs": 4, "pairs.pairs_per_part": 2,
      "pairs.batch_size": 2, "pairs.num_steps": 4, "pairs.eta_range": (0.5, 0.5)})
  assert pairs.main(c)["num_records"] == 4
  videos = {r.id: r for r in arrayrecord_io.iter_records(data, "videos")}
  made = list(arrayrecord_io.iter_records(str(tmp_path / "pairs"), "pairs"))
  for p in made:
    video = videos[p.gt_video_id]
    np.testing.assert_array_equal(np.asarray(p.cond_latent), np.asarray(video.cond_latent))
    if kind == "ti2v":  # The clean first frame: both members keep the condition.
      for member in (p.latent_a, p.latent_b):
        np.testing.assert_allclose(np.asarray(member[:1], np.float32),
                                   np.asarray(video.cond_latent, np.float32), rtol=2 ** -7, atol=1e-2)
  labels = tmp_path / "labels.jsonl"
  labels.write_text("".join(json.dumps({"id": p.id, "segment_labels": [1]}) + "\n" for p in made))
  c = label_config.get_config("jsonl")
  c.label.update(file=str(labels), in_dir=str(tmp_path / "pairs"), in_name="pairs",
                 out_dir=str(tmp_path / "pairs"), out_name="labeled")
  assert label_task.main(c)["labeled"] == 4
  labeled = list(arrayrecord_io.iter_records(str(tmp_path / "pairs"), "labeled"))

  # The 14B recipe keeps its base in bf16; this comparison with diffusers' float32 model needs a
  # float32 one.
  c = with_overrides(dense.get_config(RECIPES[kind]), init_from=folder, total_steps=3, log_every=1,
                     **{"data.path": str(tmp_path / "pairs"), "data.name": "labeled",
                        "data.batch_size": 4, "optim.accum_steps": 1, "data.read_threads": 0,
                        "mesh.num_devices": 1, "mesh.shape": (-1, 1, 1),
                        "model.param_dtype": "float32", "optim.warmup_steps": 1})
  history = train.train_and_evaluate(c, str(tmp_path / "dense"))
  # Step 1 runs at the warm-up's first rate, 0: log 2 (policy == reference). With a 1-step
  # warm-up step 2 runs at the full rate, so step 3's policy differs from the reference.
  assert abs(history[1]["loss"] - np.log(2)) < 1e-3 and history[3]["loss"] != history[1]["loss"]

  out = str(tmp_path / "lora.safetensors")
  export_diffusers.main(["--workdir", str(tmp_path / "dense"), "--format", "diffusers-lora",
                         "--out", out])
  pipe.load_lora_weights(out)
  module, adapted = pretrained.load_pretrained(str(tmp_path / "dense"), dtype="float32")
  rec = labeled[0]
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1,) + rec.latent_a.shape).astype(np.float32)
  cond = conditioning.from_records([rec], module.cfg)
  t = np.full((1,), 0.6, np.float32)
  x_in, t_in, extra = conditioning.model_inputs(cond, jnp.asarray(x), jnp.asarray(t))
  text, mask = np.asarray(rec.text_emb, np.float32)[None], np.asarray(rec.text_mask)[None]
  ours = np.asarray(module.apply(adapted, x_in, t_in, jnp.asarray(text), jnp.asarray(mask),
                                 **extra))
  padded = np.pad(np.where(mask[..., None], text, 0), ((0, 0), (0, 512 - text.shape[1]), (0, 0)))
  kwargs = {} if "image_emb" not in extra else {
      "encoder_hidden_states_image": torch.from_numpy(np.asarray(extra["image_emb"]))}
  levels = np.asarray(t_in) * 1000
  if levels.ndim == 2:  # TI2V: diffusers takes a level per token; ours per latent frame.
    levels = np.repeat(levels, (x.shape[2] // 2) * (x.shape[3] // 2), axis=1)
  with torch.no_grad():
    ref = pipe.transformer(torch.from_numpy(np.asarray(x_in)).permute(0, 4, 1, 2, 3),
                           torch.from_numpy(levels), torch.from_numpy(padded),
                           return_dict=False, **kwargs)[0].permute(0, 2, 3, 4, 1).numpy()
  assert np.abs(ours - ref).max() / np.abs(ref).max() <= 1e-4


def test_an_i2v_folder_without_its_image_encoder_is_named_before_encoding(encoded, tmp_path):
  import shutil
  kind, folder, _, _ = encoded
  if kind != "wan2.1":
    return
  broken = tmp_path / "no_clip"
  shutil.copytree(folder, broken)
  shutil.rmtree(broken / "image_encoder")
  height, width = SIZES[kind]
  with pytest.raises(SystemExit, match=r"image_dim=20 \(CLIP image features\), but .*no_clip has "
                                       r"no image_encoder/"):
    encode_videos.main([f"--weights={broken}", "--manifest=unused.jsonl", f"--out={tmp_path}/o",
                        "--name=v", f"--num_frames={NUM_FRAMES}", f"--height={height}",
                        f"--width={width}", "--condition=first_frame"])
  assert not (tmp_path / "o").exists()
