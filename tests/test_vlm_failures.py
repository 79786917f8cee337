"""The VLM labeler when the server is dead, failing, hanging or broken, when budgets bind, and on
answers people (and models) actually write. Nothing may come out as a dataset of ties."""
import json
import os
import socket

import pytest

pytest.importorskip("openai")

from densedpo_jax.data import arrayrecord_io  # noqa: E402
from densedpo_jax.labeling import vlm  # noqa: E402
from densedpo_jax.labeling.vlm import VLMLabeler  # noqa: E402
from densedpo_jax.labeling.vlm_prompt import parse_verdict  # noqa: E402
from tests.vlm_server import label, make_pair, settings  # noqa: E402


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]  # Closed on return: nothing listens there.


def label_task(tmp_path, url, **vlm_fields):
  """task=label with labeler=vlm over 3 marked pairs; returns the task's result or raises."""
  from configs import label as label_config
  from densedpo_jax.labeling import task
  arrayrecord_io.write_records([make_pair(i, [i % 4], []) for i in range(3)], str(tmp_path),
                               "pairs", num_shards=1)
  c = label_config.get_config("vlm")
  c.label.update(in_dir=str(tmp_path), in_name="pairs", out_dir=str(tmp_path), out_name="vlm",
                 num_previews=0)
  c.label.vlm.update(dict(dict(base_url=url, model="scripted-vl", max_side=64, timeout_s=5.0,
                               api_key_env="DENSEDPO_TEST_NO_KEY", max_retries=1,
                               retry_backoff_s=0.01), **vlm_fields))
  return task.main(c)


@pytest.mark.parametrize("server_kind", ["dead port", "always 500", "always 429", "hangs"])
def test_a_dead_or_failing_server_stops_the_run_and_writes_no_dataset(vlm_server, tmp_path,
                                                                     server_kind):
  if server_kind == "dead port":
    url, fields, want = f"http://127.0.0.1:{free_port()}/v1", {}, "cannot reach scripted-vl"
  elif server_kind == "hangs":
    url, fields, want = vlm_server(delay=3.0).url, {"timeout_s": 0.3}, "8 of 8 questions"
  else:
    status = int(server_kind.split()[1])
    url, fields, want = vlm_server(fail=[status] * 1000).url, {}, "8 of 8 questions"
  with pytest.raises(vlm.VLMError, match=want) as e:
    label_task(tmp_path, url, **fields)
  assert url in str(e.value)
  left = sorted(f for f in os.listdir(tmp_path) if f.startswith("vlm") and "cache" not in f)
  assert left == [], left  # No shards, no sidecar, no statistics: nothing looks complete.


def test_every_http_attempt_counts_against_the_request_budget(vlm_server):
  s = vlm_server(fail=[500] * 1000)
  labeler = VLMLabeler(settings(s.url, mode="whole", max_requests=5, max_retries=4,
                                concurrency=1, max_failure_share=1.0))
  with pytest.raises(vlm.BudgetExceeded, match=r"5 HTTP attempts \(max_requests = 5\)"):
    label(labeler, make_pair(0, [0], []))
  assert len(s.bodies) == 5 and labeler.stats["calls"] == 5  # 1 + 4 retries of question 1.


def test_the_token_budget_reserves_tokens_for_calls_in_flight(vlm_server):
  s = vlm_server(delay=0.2)  # Every reply reports 100 tokens.
  labeler = VLMLabeler(settings(s.url, max_total_tokens=250, concurrency=8))
  with pytest.raises(vlm.BudgetExceeded, match="max_total_tokens = 250"):
    label(labeler, make_pair(0, [0], []))
  # The first call alone (its usage unknown), then one more: a third would pass 250.
  assert len(s.bodies) == 2 and labeler.stats["tokens"] == 200 <= 250


def test_a_token_budget_with_a_server_that_reports_no_usage_stops(vlm_server):
  s = vlm_server(usage=False)
  with pytest.raises(vlm.VLMError, match="reports no token usage, so max_total_tokens = 500"):
    label(VLMLabeler(settings(s.url, max_total_tokens=500)), make_pair(0, [0], []))
  assert len(s.bodies) == 1  # Known after the first call, before any other is paid for.


def test_a_failed_format_probe_ends_the_probe_and_calls_run_concurrently(vlm_server):
  s = vlm_server(fail=[500], delay=0.3)
  labeler = VLMLabeler(settings(s.url, max_retries=0, concurrency=8, max_failure_share=1.0))
  label(labeler, make_pair(0, [0], []))
  assert "response_format" in s.bodies[0] and labeler.stats["failures"] == 1
  assert s.max_inflight >= 4  # The 7 questions after the probe were in flight together.


@pytest.mark.parametrize("raw", [
    ("application/json", b'{"id": "x", "object": "chat.completion", "choi'),
    ("text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    ("application/json", json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                     "model": "m", "choices": []}).encode())],
    ids=["truncated JSON", "an HTML page", "no choices"])
def test_a_reply_that_is_not_a_chat_completion_names_server_model_and_snippet(vlm_server, raw):
  s = vlm_server(raw=raw)
  with pytest.raises(vlm.VLMError, match=r"scripted-vl at http://127\.0\.0\.1:\d+/v1 sent a reply "
                                         r"that is not a Chat Completion"):
    label(VLMLabeler(settings(s.url)), make_pair(0, [0], []))


@pytest.mark.parametrize("text, verdict", [
    ("first", "first"), ("Second.", "second"), ("Tie: both blur the same", "tie"),
    ("**First** - fewer artifacts", "first"), ("Answer: second", "second"),
    ('```json\n{"verdict": "second", "reason": "the first flickers"}\n```', "second"),
    ('{"verdict": "Tie", "reason": "same"}', "tie"), ('"first"', "first"),
    ("First, let me compare the two videos. The second video has fewer artifacts.", None),
    ("firstly, the second one", None), ("I cannot tell.", None), ("", None),
    ('{"verdict": "better"}', None), ('{"answer": "first"}', None)])
def test_verdicts_are_read_conservatively(text, verdict):
  assert parse_verdict(text) == verdict


def test_a_custom_instruction_with_braces_keeps_them(vlm_server):
  s = vlm_server()
  instruction = 'Reply as JSON, e.g. {"verdict": "tie"}. Prompt: {prompt}. Which has fewer artifacts?'
  labeler = VLMLabeler(settings(s.url, instruction=instruction))
  label(labeler, make_pair(1, [0], []))
  text = s.bodies[0]["messages"][0]["content"][-1]["text"]
  assert text == ('Reply as JSON, e.g. {"verdict": "tie"}. Prompt: a red circle moves right. '
                  "Which has fewer artifacts?")


def test_without_the_vlm_extra_the_labeler_says_what_to_install(monkeypatch):
  import sys
  monkeypatch.setitem(sys.modules, "openai", None)  # As if `openai` were not installed.
  labeler = VLMLabeler(settings("http://127.0.0.1:9/v1"))
  with pytest.raises(vlm.VLMError, match=r"needs the \[vlm\] extra .*pip install"):
    label(labeler, make_pair(0, [0], []))


@pytest.mark.e2e
def test_the_job_ends_on_a_dead_server_with_one_line(tmp_path):
  """Through `python -m densedpo_jax.main`: `error: <what, where>` as the last line, exit 1, the
  traceback in the log file only."""
  import subprocess
  import sys
  arrayrecord_io.write_records([make_pair(i, [i % 4], []) for i in range(2)], str(tmp_path),
                               "pairs", num_shards=1)
  url = f"http://127.0.0.1:{free_port()}/v1"
  out = subprocess.run(
      [sys.executable, "-m", "densedpo_jax.main", "--config=configs/label.py:vlm",
       f"--workdir={tmp_path / 'run'}", f"--config.label.in_dir={tmp_path}",
       "--config.label.in_name=pairs", f"--config.label.out_dir={tmp_path}",
       "--config.label.out_name=vlm", f"--config.label.vlm.base_url={url}",
       "--config.label.vlm.max_retries=0", "--config.label.vlm.api_key_env=DENSEDPO_TEST_NO_KEY"],
      capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 1, out.stderr[-3000:]
  assert lines[-1].startswith(f"error: vlm: cannot reach gpt-4o at {url}"), lines[-1]
  assert "Traceback" not in out.stderr
  assert "Traceback" in (tmp_path / "run" / "logs" / "log.txt").read_text()
