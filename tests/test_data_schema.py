"""Record schema and byte codec: exact round trips and one error per malformed field."""
import dataclasses
import math

import ml_dtypes
import numpy as np
import pytest

from densedpo_jax.data import codec
from densedpo_jax.data import schema
from densedpo_jax.data import synthetic

_DTYPES = ("float32", "bfloat16", "float16")


def _assert_same(a, b):
  assert type(a) is type(b)
  for f in dataclasses.fields(a):
    x, y = getattr(a, f.name), getattr(b, f.name)
    if isinstance(x, np.ndarray):
      assert x.dtype == y.dtype and x.shape == y.shape, f.name
      np.testing.assert_array_equal(x.view(np.uint8), y.view(np.uint8), err_msg=f.name)  # bit-exact
    elif isinstance(x, float) and math.isnan(x):
      assert math.isnan(y), f.name
    else:
      assert x == y, f.name


@pytest.mark.parametrize("seed", range(6))
def test_pair_round_trip_randomized(seed):
  rng = np.random.default_rng(seed)
  r = int(rng.choice([1, 4]))
  t = int(rng.integers(2, 6))
  rec = synthetic.random_pair(
      rng, f"pair-{seed}", latent_shape=(t, int(rng.integers(1, 5)), int(rng.integers(1, 5)), 3),
      text_shape=(int(rng.integers(1, 9)), 8), frames_per_segment=int(rng.integers(1, 5)),
      temporal_factor=r, causal=bool(rng.integers(2)), latent_dtype=_DTYPES[seed % 3],
      labeled=bool(seed % 2), source=("vanilla", "guided")[seed % 2])
  rec = dataclasses.replace(rec, metadata={"note": "é", "xs": [1, 2.5]})
  out = codec.decode(codec.encode(rec))
  _assert_same(rec, out)
  assert out.latent_a.dtype == schema.LATENT_DTYPES[rec.latent_dtype]


@pytest.mark.parametrize("latent_dtype", _DTYPES)
def test_video_round_trip_and_storage_cast(latent_dtype):
  rng = np.random.default_rng(0)
  rec = synthetic.random_video(rng, "v0", latent_shape=(5, 3, 4, 2), temporal_factor=4)
  assert rec.latent.dtype == np.float32
  rec = dataclasses.replace(rec, latent_dtype=latent_dtype)
  data = codec.encode(rec)
  out = codec.decode(data)
  want = rec.latent.astype(schema.LATENT_DTYPES[latent_dtype])
  assert out.latent.dtype == want.dtype and out.num_frames == 17
  np.testing.assert_array_equal(out.latent.view(np.uint8), want.view(np.uint8))
  _assert_same(dataclasses.replace(rec, latent=want), out)
  if latent_dtype != "float32":  # half the latent bytes
    full = len(codec.encode(dataclasses.replace(rec, latent_dtype="float32")))
    assert len(data) <= full - rec.latent.nbytes // 2 + 64  # 64: array alignment slack


def test_bfloat16_values_survive_exactly():
  big = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)  # Non-finite values are refused (below).
  x = np.array([1.0, -2.5, 3.140625, 1e-30, big], ml_dtypes.bfloat16).reshape(5, 1, 1, 1)
  rec = synthetic.random_video(np.random.default_rng(1), "v", latent_shape=(5, 1, 1, 1), latent_dtype="bfloat16")
  out = codec.decode(codec.encode(dataclasses.replace(rec, latent=x)))
  assert out.latent.dtype == ml_dtypes.bfloat16
  np.testing.assert_array_equal(out.latent.astype(np.float32), x.astype(np.float32))


def _pair():
  return synthetic.random_pair(np.random.default_rng(3), "p", latent_shape=(5, 2, 2, 3), temporal_factor=4,
                               frames_per_segment=4, source="guided")


_BAD_PAIRS = [
    ("latent_b", dict(latent_b=np.zeros((5, 2, 3, 3), np.float32))),
    ("latent_a", dict(latent_a=np.zeros((4, 2, 2, 3), np.float32), latent_b=np.zeros((4, 2, 2, 3), np.float32))),
    ("latent_a", dict(latent_a=np.zeros((5, 2, 2), np.float32))),
    ("latent_a", dict(latent_a=np.zeros((5, 2, 2, 3), np.int32))),
    ("num_frames", dict(num_frames=16)),  # 16 = 1 + 4k is false for a causal r=4 autoencoder
    ("segment_labels", dict(segment_labels=np.array([1, 0, 2, 0, 1], np.int8))),
    ("segment_labels", dict(segment_labels=np.array([1, 0], np.int8))),
    ("segment_labels", dict(segment_labels=np.array([1, 0, 1, 0, 1], np.int32))),
    ("global_label", dict(global_label=3)),
    ("source", dict(source="sdedit")),
    ("eta", dict(eta=1.5)),
    ("eta", dict(source="vanilla", eta=0.5)),
    ("gt_video_id", dict(gt_video_id=None)),
    ("text_mask", dict(text_mask=np.ones(3, bool))),
    ("text_mask", dict(text_mask=np.ones(16, np.float32))),
    ("frames_per_segment", dict(frames_per_segment=0)),
    ("latent_dtype", dict(latent_dtype="int8")),
    ("seed_a", dict(seed_a=1.5)),
    ("fps", dict(fps=-1.0)),
    ("id", dict(id="")),
    ("latent_b", dict(latent_b=np.where(np.arange(60).reshape(5, 2, 2, 3) == 37, np.nan, 0.0)
                      .astype(np.float32))),
    ("text_emb", dict(text_emb=np.full((16, 8), np.inf, np.float32))),
]


@pytest.mark.parametrize("field,change", _BAD_PAIRS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(_BAD_PAIRS)])
def test_each_malformed_pair_names_its_field(field, change):
  schema.validate(_pair())  # the unchanged pair is fine
  bad = dataclasses.replace(_pair(), **change)
  with pytest.raises(schema.RecordError, match=f"field '{field}'") as e:
    schema.validate(bad, "pairs-00001-of-00008.array_record", 17)
  assert e.value.field == field
  assert "pairs-00001-of-00008.array_record, record 17" in str(e.value)
  with pytest.raises(schema.RecordError, match=f"field '{field}'"):
    codec.encode(bad)


def test_a_non_finite_latent_names_how_many_and_where():
  latent = np.zeros((5, 2, 2, 3), np.float32)
  latent[3, 1, 0, 2] = np.nan
  latent[4, 0, 0, 0] = -np.inf
  bad = dataclasses.replace(_pair(), latent_a=latent, latent_b=np.zeros_like(latent))
  with pytest.raises(schema.RecordError, match=r"s\.array_record, record 2, field 'latent_a': holds "
                                               r"2 non-finite value\(s\) \(NaN or Inf\), the first "
                                               r"at index \(3, 1, 0, 2\)"):
    schema.validate(bad, "s.array_record", 2)
  big_endian = np.zeros(70000, ">f4")  # Large enough for the fast path, which reads native bits.
  big_endian[5] = np.nan
  with pytest.raises(schema.RecordError, match=r"holds 1 non-finite value\(s\) .* \(5,\)"):
    schema.check_finite(big_endian, "text_emb")
  stored = dataclasses.replace(bad, latent_dtype="bfloat16")  # Checked in the stored dtype too.
  with pytest.raises(schema.RecordError, match="field 'latent_a': holds 2 non-finite"):
    codec.decode(codec.encode(stored, validate=False))


def test_malformed_video_names_its_field():
  rec = synthetic.random_video(np.random.default_rng(0), "v", latent_shape=(4, 2, 2, 3))
  for field, change in [("latent", dict(latent=np.zeros((5, 2, 2, 3), np.float32))),
                        ("causal", dict(causal="yes")), ("metadata", dict(metadata=[1])),
                        ("text_emb", dict(text_emb=np.zeros(16, np.float32)))]:
    with pytest.raises(schema.RecordError, match=f"record 3, field '{field}'"):
      schema.validate(dataclasses.replace(rec, **change), "videos.array_record", 3)


def test_decode_errors_name_path_index_and_field():
  data = codec.encode(_pair())
  with pytest.raises(schema.RecordError, match=r"shard-7\.array_record, record 4, field 'header'"):
    codec.decode(b"XXXX" + data[4:], "shard-7.array_record", 4)
  # Corrupt the stored labels: the decoded record fails validation, located.
  header = codec.read_header(data)
  off = header["arrays"]["segment_labels"][2]
  bad = bytearray(data)
  bad[off] = 5
  with pytest.raises(schema.RecordError, match=r"s\.array_record, record 9, field 'segment_labels'"):
    codec.decode(bytes(bad), "s.array_record", 9)
  assert codec.decode(bytes(bad), validate=False).segment_labels[0] == 5
  with pytest.raises(schema.RecordError, match="field 'metadata'"):
    codec.encode(dataclasses.replace(_pair(), metadata={"x": object()}), validate=False)


def test_header_and_single_array_read_without_latents():
  rec = _pair()
  data = codec.encode(rec)
  header = codec.read_header(data)
  assert header["kind"] == "pair" and header["fields"]["id"] == "p"
  np.testing.assert_array_equal(codec.read_array(data, header, "segment_labels"), rec.segment_labels)
  assert codec.read_array(data, header, "nothing") is None
  assert all(spec[2] % 64 == 0 for spec in header["arrays"].values())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32", "float64"])
def test_the_finiteness_check_agrees_with_numpy_on_random_bit_patterns(dtype):
  """The exponent-bit fast path against np.isfinite on arrays of random bits (NaN payloads, both
  infinities, subnormals, values near the largest); 400 arrays of 8 values (tiled to the size that
  takes the fast path), both verdicts often."""
  dt = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
  rng = np.random.default_rng(0)
  unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[dt.itemsize]
  info = ml_dtypes.finfo(dt) if dtype == "bfloat16" else np.finfo(dt)
  lowest = unsigned(1) << unsigned(info.nmant)  # The exponent field's lowest bit.
  exponent = unsigned(((1 << info.nexp) - 1) << info.nmant)
  top = unsigned(1) << unsigned(info.nmant + info.nexp - 1)
  verdicts = []
  for _ in range(400):
    bits = rng.integers(0, np.iinfo(unsigned).max, size=8, dtype=unsigned, endpoint=True)
    bits &= ~top  # Top exponent bit off: finite values of every sign, mantissa and scale.
    k = rng.integers(8)  # One value's exponent all ones (NaN or Inf) or one less (near the max).
    bits[k] = (bits[k] & ~exponent) | (exponent if rng.random() < 0.5 else exponent - lowest)
    x = np.tile(bits.view(dt), 65536 // 8)  # Large enough for the fast path.
    with np.errstate(invalid="ignore"):  # Signalling NaNs warn when cast.
      want = bool(np.isfinite(x[:8].astype(np.float64)).all())
    try:
      schema.check_finite(x, "latent")
      got = True
    except schema.RecordError:
      got = False
    assert got == want, x
    verdicts.append(got)
  assert 0.2 < np.mean(verdicts) < 0.8
