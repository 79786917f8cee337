"""A scripted Chat Completions server on 127.0.0.1 that answers from the images it receives (the
video with a magenta marker in a segment is the worse one there), and pairs that carry markers.
Shared by the VLM tests; a helper module, not a test module."""
import base64
import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image

from densedpo_jax.data import schema
from densedpo_jax.labeling import vlm_prompt
from densedpo_jax.labeling.vlm import VLMSettings

T, SIDE, PER = 16, 16, 4  # 16 frames of 16 x 16 at 8 fps, 4-frame segments: 4 segments.


class _QuietServer(ThreadingHTTPServer):
  """A client that hung up (a timeout test) is expected: no traceback for it on stderr."""

  def handle_error(self, request, client_address):
    if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
      super().handle_error(request, client_address)


class Server:
  """Scripted VLM. `policy(first_has_marker, second_has_marker, body) -> verdict or raw text`;
  `fail`: statuses answered first, in order; `raw`: bytes sent instead of any reply (a broken
  server); `inflight` / `max_inflight`: requests being answered now / at most at once."""

  def __init__(self, policy=None, json_ok=True, fail=(), delay=0.0, raw=None, usage=True):
    self.policy, self.usage = policy or self.truthful, usage
    self.json_ok, self.fail, self.delay, self.raw = json_ok, list(fail), delay, raw
    self.bodies, self.lock = [], threading.Lock()
    self.inflight = self.max_inflight = 0
    server = self

    class Handler(BaseHTTPRequestHandler):
      def log_message(self, *args):
        pass

      def do_POST(self):
        with server.lock:
          server.inflight += 1
          server.max_inflight = max(server.max_inflight, server.inflight)
        try:
          self._answer()
        finally:
          with server.lock:
            server.inflight -= 1

      def _answer(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with server.lock:
          server.bodies.append(body)
          status = server.fail.pop(0) if server.fail else 200
        if server.raw is not None:
          kind, data = server.raw
          self.send_response(200)
          self.send_header("Content-Type", kind)
          self.send_header("Content-Length", str(len(data)))
          self.end_headers()
          return self.wfile.write(data)
        if status != 200:
          return self._send(status, {"error": {"message": f"scripted {status}", "type": "x"}})
        if server.delay:
          time.sleep(server.delay)
        if "response_format" in body and not server.json_ok:
          return self._send(400, {"error": {"message": "response_format is not supported",
                                            "type": "invalid_request_error"}})
        first, second = server.blocks(body)
        answer = server.policy(marked(first), marked(second), body)
        if answer in vlm_prompt.VERDICTS:
          answer = (json.dumps({"verdict": answer, "reason": "marker"})
                    if "response_format" in body else f"{answer.capitalize()}: the other has a blob")
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0,
                         "model": body["model"], "choices": [{
                             "index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                         **({"usage": {"prompt_tokens": 90, "completion_tokens": 10,
                                       "total_tokens": 100}} if server.usage else {})})

      def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
    threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

  @staticmethod
  def truthful(first_marked, second_marked, body):
    return "tie" if first_marked == second_marked else ("second" if first_marked else "first")

  @staticmethod
  def blocks(body):
    """The decoded images of the first and of the second video, from the message parts."""
    blocks, current = [[], []], None
    for part in body["messages"][0]["content"]:
      if part["type"] == "text":
        current = {vlm_prompt.FIRST_INTRO: 0, vlm_prompt.SECOND_INTRO: 1}.get(part["text"], current)
      else:
        data = base64.b64decode(part["image_url"]["url"].split(",", 1)[1])
        blocks[current].append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return blocks

  def close(self):
    self.httpd.shutdown()


def marked(images):
  """Whether any image shows the magenta marker (robust to JPEG)."""
  return any(((im[..., 0] > 180) & (im[..., 1] < 90) & (im[..., 2] > 180)).sum() > 20
             for im in images)


def make_pair(i, marks_a, marks_b, seed=0):
  """A pixel pair (ShapesWorld layout) with a 6 x 6 magenta marker in the listed segments."""
  rng = np.random.default_rng([seed, i])
  base = np.clip(rng.normal(-0.5, 0.1, (T, SIDE, SIDE, 3)), -1, 1).astype(np.float32)
  a, b = base.copy(), base.copy()
  for video, marks in ((a, marks_a), (b, marks_b)):
    for s in marks:
      video[s * PER:(s + 1) * PER, 5:11, 5:11] = (1.0, -1.0, 1.0)
  emb = np.zeros((4, 8), np.float32)
  prompt = f"a red circle moves {('left', 'right', 'up', 'down')[i % 4]}"  # ShapesWorld's grammar.
  return schema.PairRecord(f"p{i}", prompt, emb, np.ones(4, bool), a, b, num_frames=T,
                           fps=8.0, frames_per_segment=PER, source="vanilla")


def settings(url, **kw):
  return VLMSettings(**{"base_url": url, "model": "scripted-vl", "max_side": 64, "timeout_s": 5.0,
                        "max_retries": 2, "retry_backoff_s": 0.01,
                        "api_key_env": "DENSEDPO_TEST_NO_KEY", **kw})


def label(labeler, pair):
  return labeler.label(pair, pair.latent_a, pair.latent_b)
