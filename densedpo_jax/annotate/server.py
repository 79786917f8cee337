"""The annotation web server: standard library only (`ThreadingHTTPServer`), four routes.

    GET  /                       the page (static/index.html, app.js, style.css)
    GET  /api/next?annotator=A   the next pair for A: prompt, timing, segments, side swap
    GET  /api/frames?pair=ID&side=left|right&annotator=A   a PNG sprite sheet of that side
    POST /api/label              {"annotator", "pair", "segments": ["left"|"right"|"tie"],
                                  "whole": "left"|"right"|"tie"|null, "broken": bool,
                                  "comment": str, "seconds": float}

Binds 127.0.0.1 by default. Any other address needs a token, which every API request must
carry (`?token=` or the `X-Token` header); the page's own files hold no data and need none.
Against other web pages in the annotator's browser: the `Host` header must name the address the
server is bound to (DNS rebinding), a foreign `Origin` is refused, and a POST must say
`Content-Type: application/json` (which a cross-site form cannot send without asking). Pair ids on
the wire are opaque (an HMAC under a per-run key): a gold pair's id tells nothing, and only the
annotator a pair was handed to may label it. Every input is validated and refused with a 400
naming the field; a connection that stops sending is dropped after `READ_TIMEOUT_S`; files are
served only from a fixed table, never from a path in the request. A label that cannot be written
(a full disk) is answered 507 and leaves no fragment in the file.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import os
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from densedpo_jax.annotate.store import NotLeased, Store
from densedpo_jax.data import jsonl

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/style.css": ("style.css", "text/css; charset=utf-8")}
STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")
ANNOTATOR = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
CHOICES = {"left": 1, "right": -1, "tie": 0}
MAX_BODY, MAX_COMMENT = 64 * 1024, 2000
READ_TIMEOUT_S = 20.0  # A client silent this long mid-request is dropped (slow-loris).


class BadRequest(ValueError):
  """A refused input: the message names the field and what was expected."""


class Conflict(BadRequest):
  """A second label of the same pair by the same annotator (409)."""


def is_loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == "localhost"


def to_record_labels(screen: list[int], swapped: bool) -> list[int]:
  """Screen labels (+1: left better) -> the record's (+1: a better); left is b when swapped."""
  return [-v if swapped else v for v in screen]


def parse_label(store: Store, body: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
  """Validates a submitted label; returns (pair id, annotator, the JSONL line)."""
  annotator = body.get("annotator")
  if not isinstance(annotator, str) or not ANNOTATOR.match(annotator):
    raise BadRequest(f"annotator: expected 1-64 of A-Z a-z 0-9 _ . @ -, got {annotator!r}")
  public = body.get("pair")
  if not isinstance(public, str) or public not in store.by_public:
    raise BadRequest(f"pair: unknown pair id {str(public)[:40]!r}")
  pid = store.by_public[public]
  item, swapped = store.items[pid], store.swap(pid, annotator)
  if annotator in store.done[pid]:
    raise Conflict(f"pair: {annotator} already labeled {public!r}")
  broken = body.get("broken", False)
  if not isinstance(broken, bool):
    raise BadRequest(f"broken: expected true or false, got {broken!r}")
  comment = body.get("comment", "")
  if not isinstance(comment, str) or len(comment) > MAX_COMMENT:
    raise BadRequest(f"comment: expected a string of at most {MAX_COMMENT} characters")
  segments = body.get("segments")
  if broken and segments is None:
    seg = None
  else:
    if not isinstance(segments, list) or len(segments) != item.num_segments:
      raise BadRequest(f"segments: expected a list of {item.num_segments} choices, got {segments!r}")
    bad = [v for v in segments if not isinstance(v, str) or v not in CHOICES]
    if bad:
      raise BadRequest(f"segments: values must be one of {sorted(CHOICES)}, got {bad}")
    seg = to_record_labels([CHOICES[v] for v in segments], swapped)
  whole = body.get("whole")
  if whole is not None and (not isinstance(whole, str) or whole not in CHOICES):
    raise BadRequest(f"whole: expected one of {sorted(CHOICES)} or null, got {whole!r}")
  seconds = body.get("seconds", 0.0)
  if not isinstance(seconds, (int, float)) or not 0 <= seconds < 86400:
    raise BadRequest(f"seconds: expected a number of seconds in [0, 86400), got {seconds!r}")
  line = {"id": pid, "segment_labels": seg,
          "global_label": None if whole is None else to_record_labels([CHOICES[whole]], swapped)[0],
          "annotator": annotator, "swapped": swapped, "seconds": round(float(seconds), 2),
          "broken": broken, "comment": comment, "time": time.time()}
  if item.gold is not None:
    line["gold"] = item.gold
  return pid, annotator, line


def allowed_hosts(host: str, port: int) -> frozenset[str] | None:
  """The `Host` header values a browser sends to this server; None (any) on a wildcard address,
  where the token guards instead."""
  if host in ("", "0.0.0.0", "::"):
    return None
  names = {host, f"[{host}]"} if ":" in host else {host}
  if is_loopback(host):
    names |= {"localhost", "127.0.0.1", "[::1]"}
  return frozenset({f"{n}:{port}" for n in names} | (names if port == 80 else set()))


def make_handler(store: Store, token: str | None, hosts: frozenset[str] | None):
  class Handler(BaseHTTPRequestHandler):
    server_version = "densedpo-annotate"
    timeout = READ_TIMEOUT_S  # Applied to the socket by StreamRequestHandler.setup.

    def log_message(self, fmt, *args):  # Quiet: one line per label goes to the console instead.
      pass

    def _send(self, status: int, body: bytes, kind: str) -> None:
      self.send_response(status)
      self.send_header("Content-Type", kind)
      self.send_header("Content-Length", str(len(body)))
      self.send_header("Cache-Control", "no-store")
      self.send_header("X-Content-Type-Options", "nosniff")
      self.send_header("X-Frame-Options", "DENY")
      self.end_headers()
      self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
      self._send(status, json.dumps(obj).encode(), "application/json")

    def _same_site(self) -> bool:
      """Refuses (403) a foreign Host (DNS rebinding) or a request another site's page made."""
      host = self.headers.get("Host", "")
      if hosts is not None and host not in hosts:
        self._json(403, {"error": f"Host {host[:80]!r} is not this server's address; open the "
                                  f"page at one of {sorted(hosts)}"})
        return False
      origin = self.headers.get("Origin")
      if (origin is not None and origin != f"http://{host}") or (
          self.headers.get("Sec-Fetch-Site") == "cross-site"):
        self._json(403, {"error": f"requests from other sites are refused (Origin {origin!r})"})
        return False
      return True

    def _authorised(self, query) -> bool:
      if token is None:
        return True
      given = self.headers.get("X-Token") or (query.get("token") or [""])[0]
      if hmac.compare_digest(given.encode(), token.encode()):
        return True
      self._json(403, {"error": "a valid token is required (?token= or the X-Token header)"})
      return False

    def do_GET(self):
      url = urlparse(self.path)
      query = parse_qs(url.query)
      if not self._same_site():
        return
      if url.path in STATIC:  # The page itself: no pairs, no labels.
        name, kind = STATIC[url.path]
        with open(os.path.join(STATIC_DIR, name), "rb") as f:
          return self._send(200, f.read(), kind)
      if not self._authorised(query):
        return
      annotator = (query.get("annotator") or [""])[0]
      if url.path in ("/api/next", "/api/frames") and not ANNOTATOR.match(annotator):
        return self._json(400, {"error": f"annotator: expected 1-64 of A-Z a-z 0-9 _ . @ -, "
                                         f"got {annotator[:80]!r}"})
      if url.path == "/api/next":
        item = store.next_pair(annotator)
        progress = store.progress(annotator)
        if item is None:
          return self._json(200, {"done": True, "progress": progress})
        return self._json(200, {
            "done": False, "pair": store.public[item.id], "prompt": item.prompt, "fps": item.fps,
            "num_frames": len(item.frames[0]), "frames_per_segment": item.frames_per_segment,
            "num_segments": item.num_segments, "progress": progress})
      if url.path == "/api/frames":
        pid = store.by_public.get((query.get("pair") or [""])[0])
        side = (query.get("side") or [""])[0]
        if pid is None or side not in ("left", "right"):
          return self._json(400, {"error": "pair: unknown id, or side: expected left or right"})
        member = ("b" if side == "left" else "a") if store.swap(pid, annotator) else (
            "a" if side == "left" else "b")
        return self._send(200, store.sprite(pid, member), "image/png")
      self._json(404, {"error": f"no such page: {url.path[:80]}"})

    def do_POST(self):
      url = urlparse(self.path)
      if not self._same_site() or not self._authorised(parse_qs(url.query)):
        return
      if url.path != "/api/label":
        return self._json(404, {"error": f"no such endpoint: {url.path[:80]}"})
      kind = self.headers.get("Content-Type", "")
      if kind.split(";")[0].strip().lower() != "application/json":
        return self._json(415, {"error": f"Content-Type: expected application/json, got {kind[:80]!r}"})
      length = self.headers.get("Content-Length") or "0"
      length = int(length) if re.fullmatch(r"[0-9]{1,9}", length) else 0
      if not 0 < length <= MAX_BODY:
        return self._json(400, {"error": f"body: expected 1 to {MAX_BODY} bytes of JSON"})
      try:
        raw = self.rfile.read(length)
      except TimeoutError:
        self.close_connection = True
        return
      if len(raw) < length:  # The client hung up mid-body.
        self.close_connection = True
        return
      try:
        body = json.loads(raw)
        if not isinstance(body, dict):
          raise BadRequest("body: expected a JSON object")
        pid, annotator, line = parse_label(store, body)
      except BadRequest as e:
        return self._json(409 if isinstance(e, Conflict) else 400, {"error": str(e)})
      except (ValueError, RecursionError):  # Bad JSON or UTF-8, a number too long, nesting.
        return self._json(400, {"error": "body: not valid JSON"})
      try:
        if not store.record(pid, annotator, line):
          return self._json(409, {"error": f"pair: {annotator} already labeled {body['pair']!r}"})
      except NotLeased as e:
        return self._json(409, {"error": f"pair: {body['pair']!r} {e}"})
      except jsonl.JsonlError as e:  # The file ends in a fragment someone else left.
        print(f"annotate: ERROR a label by {annotator} was not saved: {e}", flush=True)
        return self._json(500, {"error": "the server could not save this label (its label file "
                                         "needs a restart of the server); nothing was recorded"})
      except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        print(f"annotate: ERROR a label by {annotator} was not saved: {e}", flush=True)
        return self._json(507 if full else 500, {
            "error": f"the server could not save this label ({'disk full' if full else e.strerror}); "
                     "nothing was recorded, tell whoever runs the server and submit again later"})
      print(f"annotate: {annotator} labeled {pid} in {line['seconds']:.0f} s", flush=True)
      self._json(200, {"ok": True, "progress": store.progress(annotator)})

  return Handler


def make_server(store: Store, host: str = "127.0.0.1", port: int = 8765,
                token: str | None = None) -> ThreadingHTTPServer:
  """The server (not started: call `serve_forever`). Off loopback a token is required."""
  if not is_loopback(host) and not token:
    raise ValueError(f"--host={host} is not a loopback address: pass --token (every request must "
                     "then carry it) or bind 127.0.0.1")
  server = ThreadingHTTPServer((host, port), BaseHTTPRequestHandler)
  server.RequestHandlerClass = make_handler(store, token, allowed_hosts(host, server.server_address[1]))
  return server
