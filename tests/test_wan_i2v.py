"""Image-to-video against diffusers' `WanImageToVideoPipeline`: the condition's mask, and a short
sampling loop equal to the pipeline's on the same latents, condition and sigmas, for Wan 2.1 I2V
(36 input channels, CLIP image branch) and Wan 2.2 TI2V (a clean first latent frame at noise level
0). Tiny pipelines written by diffusers (tests/tiny_wan.py); no download."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from PIL import Image  # noqa: E402

from densedpo_jax.model import build, conditioning, pretrained  # noqa: E402
from densedpo_jax.objectives import flow, sampling  # noqa: E402
from tests.helpers import forward_gap_bound, gamma  # noqa: E402
from tests.tiny_wan import TEXT_DIM, build_i2v_pipeline  # noqa: E402

TEXT_LEN = 512
SIZES = {"wan2.1": (32, 48), "ti2v": (32, 64)}  # Multiples of 16 (2.1 VAE) and 32 (2.2 VAE).
NUM_FRAMES = 5


@pytest.fixture(scope="module", params=sorted(SIZES))
def pipeline(request, tmp_path_factory):
  """`(kind, diffusers pipeline, our module, our params)`, ours read from the saved folder."""
  root = str(tmp_path_factory.mktemp(request.param))
  pipe = build_i2v_pipeline(root, request.param)
  cfg = pretrained.weights_config(root)
  return request.param, pipe, build(cfg), sampling.load_exported_params(root, cfg)


def _image(seed, height, width):
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _text(seed):
  rng = np.random.default_rng(seed)
  text = np.zeros((1, TEXT_LEN, TEXT_DIM), np.float32)
  text[:, :6] = rng.normal(size=(1, 6, TEXT_DIM))
  return text, np.arange(TEXT_LEN)[None] < 6


def _pipeline_condition(pipe, kind, image, height, width, seed):
  """What the pipeline builds from the image: initial latents, condition (and mask), image
  embedding; channels-first torch tensors."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    pixels = pipe.video_processor.preprocess(image, height=height, width=width)
    out = pipe.prepare_latents(pixels, 1, pipe.vae.config.z_dim, height, width, NUM_FRAMES,
                               torch.float32, "cpu", generator, None)
    image_embeds = pipe.encode_image(image, "cpu") if kind == "wan2.1" else None
  return out, image_embeds


cl = lambda t: t.permute(0, 2, 3, 4, 1).numpy()  # [B, C, F, H, W] -> channels last.


def test_the_mask_is_the_pipelines(pipeline):
  kind, pipe, _, _ = pipeline
  height, width = SIZES[kind]
  out, _ = _pipeline_condition(pipe, kind, _image(0, height, width), height, width, 0)
  if kind == "wan2.1":
    _, condition = out
    mask = cl(condition[:, :conditioning.MASK_CHANNELS])[0]
    np.testing.assert_array_equal(conditioning.first_frame_mask(mask.shape[:3]), mask)
  else:
    _, latent_condition, first_frame_mask = out
    assert latent_condition.shape[2] == 1  # TI2V: the first frame's latent alone.
    assert (first_frame_mask[:, :, 0] == 0).all() and (first_frame_mask[:, :, 1:] == 1).all()


def test_a_sampling_loop_equals_the_pipeline_loop(pipeline):
  """Euler on the pipeline scheduler's sigmas, no CFG, from the pipeline's own initial latents and
  condition: the final latents agree (TI2V's frame 0 is the condition in both)."""
  kind, pipe, module, params = pipeline
  height, width = SIZES[kind]
  seed = int(np.random.randint(1 << 30))
  print(f"input seed {seed}")
  image = _image(seed, height, width)
  out, image_embeds = _pipeline_condition(pipe, kind, image, height, width, seed)
  latents = out[0]
  if kind == "wan2.1":
    cond = conditioning.Condition(jnp.asarray(cl(out[1][:, conditioning.MASK_CHANNELS:])),
                                  jnp.asarray(image_embeds.numpy()), "concat")
  else:
    cond = conditioning.Condition(jnp.asarray(cl(out[1])), None, "first_frame")
  text, mask = _text(seed + 1)
  num_steps = 6
  pipe.scheduler.set_timesteps(num_steps)
  sigmas = pipe.scheduler.sigmas.numpy().astype(np.float32)
  with torch.no_grad():
    ref = pipe(image=image, prompt_embeds=torch.from_numpy(text), height=height, width=width,
               num_frames=NUM_FRAMES, num_inference_steps=num_steps, guidance_scale=1.0,
               latents=latents.clone(), output_type="latent").frames
  run = jax.jit(lambda p, x, c: conditioning.finish(c, flow.euler_integrate(
      conditioning.conditioned(sampling.velocity_fn(module, p), c), x, sigmas,
      jnp.asarray(text), jnp.asarray(mask))))
  ours = np.asarray(run(params, jnp.asarray(cl(latents)), cond))
  ref = cl(ref.float())
  # As for the A14B loop (tests/test_wan_experts.py), with 4 more reductions a block for the image
  # branch: each velocity within the forward bound, e^L over the run, a few roundings a step.
  bound = (forward_gap_bound(1.0, module.cfg.depth, TEXT_LEN, reductions_per_block=12) * np.e
           + 2 * num_steps * gamma(4))
  gap = np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max()
  assert gap <= bound, (gap, bound)
  if kind == "ti2v":
    np.testing.assert_allclose(ours[:, :1], cl(out[1]), rtol=0, atol=1e-6)


def test_a_model_that_needs_a_condition_names_what_is_missing(pipeline):
  kind, _, module, params = pipeline
  if kind != "wan2.1":
    return
  from densedpo_jax.data import schema
  rec = schema.VideoRecord("v0", "p", np.zeros((3, 4), np.float32), np.ones(3, bool),
                           np.zeros((2, 4, 6, 16), np.float32), num_frames=5, fps=16.0,
                           temporal_factor=4)
  with pytest.raises(ValueError, match=r"image-to-video \(concat\); record\(s\) \['v0'\] have no "
                                       "cond_latent"):
    conditioning.from_records([rec], module.cfg)
  with pytest.raises(ValueError, match="the batch has no 'cond_latent'"):
    conditioning.from_batch({"latent_a": np.zeros(1)}, "concat")
