"""The VLM labeler against a real Chat Completions server on 127.0.0.1 that answers from the images
it receives: the video with a magenta marker in a segment is the worse one there."""
import base64
import hashlib
import io
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("openai")

from densedpo_jax.data import arrayrecord_io  # noqa: E402
from densedpo_jax.labeling import agreement, vlm, vlm_prompt  # noqa: E402
from densedpo_jax.labeling.vlm import VLMLabeler  # noqa: E402
from tests.vlm_server import PER, T, Server, label, make_pair, settings  # noqa: E402

def test_request_shape_and_labels_from_what_the_server_sees(vlm_server):
  s = vlm_server()
  labeler = VLMLabeler(settings(s.url))
  pair = make_pair(0, marks_a=[0, 3], marks_b=[1, 3])
  seg, glob = label(labeler, pair)
  assert seg.tolist() == [-1, 1, 0, 0] and glob == 0
  assert len(s.bodies) == 2 * 4  # Two orders a segment.
  body = s.bodies[0]
  content = body["messages"][0]["content"]
  assert body["model"] == "scripted-vl" and body["response_format"]["type"] == "json_schema"
  kinds = [p["type"] for p in content]
  assert kinds == ["text"] + ["image_url"] * 4 + ["text"] + ["image_url"] * 4 + ["text"]
  assert content[0]["text"] == vlm_prompt.FIRST_INTRO and content[5]["text"] == vlm_prompt.SECOND_INTRO
  assert "a red circle moves left" in content[-1]["text"] and "tie" in content[-1]["text"]
  first_image = Image.open(io.BytesIO(base64.b64decode(content[1]["image_url"]["url"].split(",")[1])))
  assert first_image.format == "JPEG" and max(first_image.size) == 64
  # Both answers of every question are kept on the record's metadata.
  details = labeler.record_metadata("p0")["vlm"]
  assert len(details) == 4 and all(len(d["answers"]) == 2 for d in details)


def test_a_server_that_always_says_first_yields_ties(vlm_server):
  s = vlm_server(policy=lambda *_: "first")
  labeler = VLMLabeler(settings(s.url))
  seg, glob = label(labeler, make_pair(1, [0], [1]))
  assert seg.tolist() == [0, 0, 0, 0] and glob == 0
  assert labeler.stats["disagreements"] == 4


def test_free_text_when_the_server_refuses_response_format(vlm_server):
  s = vlm_server(json_ok=False)
  labeler = VLMLabeler(settings(s.url))
  seg, _ = label(labeler, make_pair(2, [2], [0]))
  assert seg.tolist() == [1, 0, -1, 0]
  assert "response_format" not in s.bodies[-1]  # Fell back once, then stayed on free text.
  assert sum("response_format" in b for b in s.bodies) == 1


def test_unparseable_answers_are_retried_once_then_recorded_as_failures(vlm_server):
  s = vlm_server(policy=lambda *_: "I cannot tell from these images.")
  labeler = VLMLabeler(settings(s.url, max_failure_share=1.0))  # Failures allowed: ties.
  seg, _ = label(labeler, make_pair(3, [0], []))
  assert seg.tolist() == [0, 0, 0, 0]
  assert len(s.bodies) == 2 * 8 and labeler.stats["failures"] == 8
  assert labeler.stats["retried"] == 8
  # By default a model that never answers readably stops the run instead of labeling ties.
  with pytest.raises(vlm.VLMError, match=r"8 of 8 questions to scripted-vl at http://127\.0\.0\.1"):
    label(VLMLabeler(settings(s.url)), make_pair(3, [0], []))


def test_retries_on_429_and_500_and_a_timeout_becomes_a_failure(vlm_server):
  s = vlm_server(fail=[429, 500])
  labeler = VLMLabeler(settings(s.url))
  seg, _ = label(labeler, make_pair(4, [1], []))
  assert seg.tolist() == [0, -1, 0, 0] and len(s.bodies) == 8 + 2
  assert labeler.stats["calls"] == 10 and labeler.stats["failed_attempts"] == 2
  slow = vlm_server(delay=1.5)
  labeler = VLMLabeler(settings(slow.url, timeout_s=0.3, max_retries=0, concurrency=8,
                                max_failure_share=1.0))
  start = time.time()
  seg, _ = label(labeler, make_pair(5, [1], []))
  assert seg.tolist() == [0, 0, 0, 0] and labeler.stats["failures"] == 8
  assert time.time() - start < 10


def test_cache_hits_on_rerun_and_the_budget_stops_without_paying_twice(vlm_server, tmp_path):
  s = vlm_server()
  cache = str(tmp_path / "cache.sqlite")
  pairs = [make_pair(i, [i % 4], []) for i in range(3)]
  limited = VLMLabeler(settings(s.url, cache=cache, max_requests=10, concurrency=8))
  label(limited, pairs[0])  # 8 calls.
  with pytest.raises(vlm.BudgetExceeded, match="needs 8 more.*max_requests = 10"):
    label(limited, pairs[1])  # Would exceed the budget: not started, nothing paid for nothing.
  assert len(s.bodies) == 8
  again = VLMLabeler(settings(s.url, cache=cache))
  labels = [label(again, p)[0].tolist() for p in pairs]
  assert labels[0] == [-1, 0, 0, 0] and labels[2] == [0, 0, -1, 0]
  assert len(s.bodies) == 24 and again.stats["cache_hits"] == 8  # Nothing asked twice.
  other_model = VLMLabeler(settings(s.url, cache=cache, model="another"))
  label(other_model, pairs[0])
  assert len(s.bodies) == 32  # The model is part of the key.


def test_a_wrong_key_or_model_stops_instead_of_labeling_ties(vlm_server):
  s = vlm_server(fail=[401] * 50)
  labeler = VLMLabeler(settings(s.url, max_retries=0))
  with pytest.raises(Exception, match="401"):
    label(labeler, make_pair(7, [0], []))


def test_whole_mode_asks_once_per_order(vlm_server):
  s = vlm_server()
  labeler = VLMLabeler(settings(s.url, mode="whole"))
  seg, glob = label(labeler, make_pair(6, [], [0, 2]))
  assert len(s.bodies) == 2 and glob == 1 and seg.tolist() == [1, 1, 1, 1]
  images = [p for p in s.bodies[0]["messages"][0]["content"] if p["type"] == "image_url"]
  assert len(images) == 2 * T  # 8 fps clip sampled at 8 fps: every frame.


def test_requests_stay_in_flight_across_pairs_up_to_the_concurrency(vlm_server):
  """Whole-video mode asks 2 questions a pair: one pair at a time would keep 2 requests in
  flight; the stream keeps `concurrency` (8) across pairs, and yields the pairs in order."""
  s = vlm_server(delay=0.3)
  labeler = VLMLabeler(settings(s.url, mode="whole", concurrency=8))
  pairs = [make_pair(i, [] if i % 2 else [0], [0] if i % 2 else []) for i in range(8)]
  start = time.time()
  out = list(labeler.label_stream((p, p.latent_a, p.latent_b) for p in pairs))
  assert [p.id for p, _, _ in out] == [p.id for p in pairs]
  assert [glob for _, _, glob in out] == [-1 if i % 2 == 0 else 1 for i in range(8)]
  assert s.max_inflight == 8 and len(s.bodies) == 16
  assert time.time() - start < 16 * 0.3  # Not one request at a time.
  one_at_a_time = vlm_server(delay=0.05)
  label(VLMLabeler(settings(one_at_a_time.url, mode="whole", concurrency=8, json_schema="on")),
        pairs[0])
  assert one_at_a_time.max_inflight == 2  # A single pair has only its 2 questions.


def test_the_request_budget_counts_questions_of_pairs_in_flight(vlm_server):
  s = vlm_server(delay=0.1)
  labeler = VLMLabeler(settings(s.url, mode="whole", concurrency=8, max_requests=5))
  pairs = [make_pair(i, [0], []) for i in range(4)]
  got = []
  with pytest.raises(vlm.BudgetExceeded, match=r"4 questions in flight, this pair needs 2 more"):
    for item in labeler.label_stream((p, p.latent_a, p.latent_b) for p in pairs):
      got.append(item)
  # The third pair was refused before any of its questions was asked; the two in flight were
  # paid for, so they finished and were yielded before the error.
  assert len(s.bodies) == 4 and [p.id for p, _, _ in got] == ["p0", "p1"]


def test_agreement_numbers_on_a_constructed_case():
  labels = {"a": (np.array([1, -1, 0, 1], np.int8), 1), "b": (np.array([0, 0, 1, 1], np.int8), 1)}
  ref = {"a": (np.array([1, 1, 0, -1], np.int8), 1), "b": (np.array([-1, 0, 1, 1], np.int8), -1),
         "c": (np.array([1, 1, 1, 1], np.int8), 1)}
  r = agreement.agreement(labels, ref)
  # Non-tie reference segments: a0 (hit), a1 (miss), a3 (miss), b0 (labeler tie: miss), b2, b3.
  assert r["nontie_segments"] == 6 and r["segment_accuracy"] == pytest.approx(3 / 6)
  assert r["whole_pairs"] == 2 and r["whole_accuracy"] == pytest.approx(1 / 2)
  assert r["majority_vote_accuracy"] == pytest.approx(1 / 2)  # Votes: a +1 (hit), b +1 (miss).
  assert r["tie_rate"] == pytest.approx(3 / 8)


def test_task_label_with_a_server_that_errs_on_a_known_share(vlm_server, tmp_path):
  """task=label with labeler=vlm on a pair dataset; the server errs (consistently in both orders)
  on the segments whose content hash falls in a known 25%; the agreement report recovers it."""
  from configs import label as label_config
  from densedpo_jax.labeling import task
  rng = np.random.default_rng(0)
  pairs, truth = [], {}
  for i in range(12):
    marks_a = [s for s in range(4) if rng.random() < 0.4]
    marks_b = [s for s in range(4) if s not in marks_a and rng.random() < 0.5]
    pairs.append(make_pair(i, marks_a, marks_b, seed=1))
    truth[f"p{i}"] = [(-1 if s in marks_a else 1 if s in marks_b else 0) for s in range(4)]
  arrayrecord_io.write_records(pairs, str(tmp_path), "pairs", num_shards=1)
  wrong = lambda blocks: int(hashlib.sha256(b"".join(sorted(
      np.round(np.stack(b).mean(0) / 32).astype(np.uint8).tobytes() for b in blocks))).hexdigest(), 16) % 4 == 0

  def errs(first, second, body):
    verdict = Server.truthful(first, second, body)
    if verdict != "tie" and wrong(Server.blocks(body)):
      return {"first": "second", "second": "first"}[verdict]
    return verdict
  s = vlm_server(policy=errs)
  c = label_config.get_config("vlm")
  c.label.update(in_dir=str(tmp_path), in_name="pairs", out_dir=str(tmp_path), out_name="vlm")
  c.label.vlm.update(base_url=s.url, model="scripted-vl", max_side=64, timeout_s=5.0,
                     api_key_env="DENSEDPO_TEST_NO_KEY")
  c.label.vlm.dry_run = True
  assert task.main(c) == {"questions": 96, "cached": 0, "calls": 96} and not s.bodies
  c.label.vlm.dry_run = False
  stats = task.main(c)
  assert stats["vlm"]["calls"] == 96 and stats["vlm"]["failures"] == 0
  reference = tmp_path / "truth.jsonl"
  reference.write_text("".join(json.dumps({"id": k, "segment_labels": v}) + "\n"
                               for k, v in truth.items()))
  report = agreement.agreement(agreement.load_labels(str(tmp_path / "vlm")),
                               agreement.load_labels(str(reference)))
  nontie = [(pid, k) for pid, v in truth.items() for k, x in enumerate(v) if x != 0]
  erred = 0
  as_sent = lambda frame: np.asarray(Image.open(io.BytesIO(base64.b64decode(vlm_prompt.jpeg_data_url(
      np.round((np.clip(frame, -1, 1) + 1) * 127.5).astype(np.uint8), 64, 90).split(",")[1]))))
  for pid, k in nontie:
    p = pairs[int(pid[1:])]
    erred += wrong([[as_sent(v[f]) for f in range(k * PER, (k + 1) * PER)]
                    for v in (p.latent_a, p.latent_b)])
  assert 0 < erred < len(nontie)
  assert report["segment_accuracy"] == pytest.approx(1 - erred / len(nontie))
  assert report["nontie_segments"] == len(nontie)
  # Previews for people: the first 8 pairs, each frame a | b with its label strips.
  gifs = sorted(os.listdir(tmp_path / "vlm_previews"))
  assert gifs == [f"{i:04d}.gif" for i in range(8)]
  assert Image.open(tmp_path / "vlm_previews" / "0000.gif").n_frames == T
