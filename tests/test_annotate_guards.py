"""The annotation server under a full disk, a crash mid-write, other web pages, slow or hostile
clients, and submissions for pairs nobody handed out. Real HTTP on 127.0.0.1; the full disk is
the kernel's own (RLIMIT_FSIZE on a server subprocess: writes past the limit fail with EFBIG)."""
import json
import os
import re
import resource
import socket
import subprocess
import sys
import time

import pytest

from densedpo_jax.annotate import server as server_lib
from densedpo_jax.annotate.store import gold_items, items_from_dataset
from densedpo_jax.data import jsonl, labels_io
from tests.helpers import http_call as call


def label(url, annotator):
  """Takes the next pair and labels it; `(status, reply, public id)`."""
  pid = call(f"{url}/api/next?annotator={annotator}")[1]["pair"]
  status, out = call(f"{url}/api/label", {"annotator": annotator, "pair": pid,
                                          "segments": ["left", "tie"], "seconds": 3})
  return status, out, pid


SERVER = """
import resource, signal, sys
from densedpo_jax.annotate.server import make_server
from densedpo_jax.annotate.store import Store, items_from_dataset
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # A write past the limit fails with EFBIG instead.
server = make_server(Store(items_from_dataset(sys.argv[1], "pairs"), sys.argv[2]), "127.0.0.1", 0)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_a_full_disk_mid_line_loses_no_accepted_label(annotation_pairs, tmp_path):
  out = str(tmp_path / "labels.jsonl")
  proc = subprocess.Popen([sys.executable, "-c", SERVER, annotation_pairs, out],
                          stdout=subprocess.PIPE,
                          text=True, cwd=os.getcwd())
  try:
    url = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    status, _, first = label(url, "ann")
    assert status == 200
    size = os.path.getsize(out)
    # The disk fills 40 bytes into the next line: the kernel writes those 40, then refuses.
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (size + 40, hard))
    status, reply, second = label(url, "ann")
    assert status == 507 and "disk full" in reply["error"] and "nothing was recorded" in reply["error"]
    assert os.path.getsize(out) == size  # Cut back to the last whole line: no fragment.
    # Space comes back: the same pair is still this annotator's, and its label is accepted.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    assert call(f"{url}/api/next?annotator=ann")[1]["pair"] == second
    status, _, again = label(url, "ann")
    assert status == 200 and again == second
  finally:
    proc.kill()
    proc.wait()
  lines = [json.loads(line) for line in open(out, encoding="utf-8")]  # Every line whole JSON.
  assert len(lines) == 2 and lines[0]["id"] != lines[1]["id"]
  parsed = labels_io.parse_labels(out, {f"p{i}": 2 for i in range(6)})
  assert sorted(parsed) == sorted(d["id"] for d in lines)


def test_a_full_disk_still_serves_the_frames_and_caches_no_fragment(annotation_pairs, tmp_path):
  """The frame cache cannot be written (the disk is full from the start): the page still gets
  the very PNG a writable cache serves, the server says so in one line, and the cache folder
  holds no partial file."""
  out = str(tmp_path / "labels.jsonl")
  proc = subprocess.Popen([sys.executable, "-c", SERVER, annotation_pairs, out],
                          stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
  try:
    url = f"http://127.0.0.1:{proc.stdout.readline().strip()}"
    pid = call(f"{url}/api/next?annotator=ann")[1]["pair"]
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (16, hard))
    status, full_png = call(f"{url}/api/frames?pair={pid}&side=left&annotator=ann")
    assert status == 200 and full_png.startswith(b"\x89PNG")
    assert os.listdir(out + ".frames") == []  # Nothing half-written stays.
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
    status, cached_png = call(f"{url}/api/frames?pair={pid}&side=left&annotator=ann")
    assert status == 200 and cached_png == full_png
    assert len(os.listdir(out + ".frames")) == 1  # Space is back: now it is cached.
  finally:
    proc.kill()
    out_text = proc.communicate()[0]
  assert "frame cache" in out_text and "serving the frames from memory" in out_text


def test_a_cut_short_last_line_is_set_aside_at_start_and_the_server_starts(
    annotation_server, tmp_path):
  out = tmp_path / "labels.jsonl"
  whole = json.dumps({"id": "p0", "annotator": "ann", "segment_labels": [1, 0]}) + "\n"
  out.write_text(whole + '{"id": "p1", "annotator": "ann", "segm')  # A crash mid-write.
  store, url = annotation_server()
  assert len(store.notes) == 1 and store.notes[0].startswith(f"{out}:2: an incomplete last line")
  assert (tmp_path / "labels.jsonl.partial").read_text() == '{"id": "p1", "annotator": "ann", "segm\n'
  assert out.read_text() == whole
  assert store.done["p0"] == {"ann"} and store.done["p1"] == set()
  # A whole record that only lacks its newline (written by hand) is kept, not set aside.
  out.write_text(whole + whole.replace("p0", "p2").rstrip("\n"))
  kept, _ = annotation_server(out="labels.jsonl")
  assert kept.notes == [] and kept.done["p2"] == {"ann"} and out.read_text().endswith("}\n")
  out.write_text(whole)
  assert label(url, "ann")[0] == 200
  assert len(labels_io.parse_labels(str(out), {f"p{i}": 2 for i in range(6)})) == 2
  # A bad line in the middle is not a cut-short write: the start stops, naming file and line.
  out.write_text(whole + "{oops\n" + whole)
  with pytest.raises(jsonl.JsonlError, match=re.escape(f"{out}:2: not valid JSON")):
    annotation_server()
  out.write_bytes(whole.encode() + b'{"id": "p1\xff"}\n')
  with pytest.raises(jsonl.JsonlError, match=re.escape(f"{out}:2: not UTF-8 text (byte 0xff")):
    annotation_server()


def test_a_failed_append_cuts_the_file_back_and_raises_naming_it(tmp_path):
  path = str(tmp_path / "x.jsonl")
  jsonl.append(path, {"a": 1})
  code = ("import resource, signal, sys\n"
          "from densedpo_jax.data import jsonl\n"
          "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
          "resource.setrlimit(resource.RLIMIT_FSIZE, (12, resource.RLIM_INFINITY))\n"
          "try:\n  jsonl.append(sys.argv[1], {'b': 'x' * 100})\n"
          "except OSError as e:\n  print(e)\n")
  out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                       check=True).stdout
  assert f"{path}: writing one line of 110 bytes failed" in out and "back to 9 bytes" in out
  assert open(path).read() == '{"a": 1}\n'
  with open(path, "a") as f:
    f.write('{"b": ')  # Someone else's fragment: appending after it would glue two lines.
  with pytest.raises(jsonl.JsonlError, match="x.jsonl:2: the last line is incomplete"):
    jsonl.append(path, {"c": 3})


def test_other_sites_and_foreign_hosts_are_refused(annotation_server, tmp_path):
  store, url = annotation_server()
  port = url.rsplit(":", 1)[1]
  pid = call(f"{url}/api/next?annotator=ann")[1]["pair"]
  body = {"annotator": "ann", "pair": pid, "segments": ["left", "tie"]}
  # DNS rebinding: a page at evil.example whose name now points at 127.0.0.1.
  status, out = call(f"{url}/api/next?annotator=ann", headers={"Host": f"evil.example:{port}"})
  assert status == 403 and "Host" in out["error"]
  assert call(f"{url}/", headers={"Host": f"evil.example:{port}"})[0] == 403
  # A drive-by page posting across sites, as JSON or as the text/plain a form can send unasked.
  status, out = call(f"{url}/api/label", body, headers={"Origin": "http://evil.example"})
  assert status == 403 and "other sites" in out["error"]
  assert call(f"{url}/api/label", body, headers={"Sec-Fetch-Site": "cross-site"})[0] == 403
  status, out = call(f"{url}/api/label", json.dumps(body).encode(),
                     headers={"Content-Type": "text/plain"})
  assert status == 415 and "application/json" in out["error"]
  assert not os.path.exists(tmp_path / "labels.jsonl")
  # The page itself (same origin, by name or address) is served and may post.
  assert call(f"{url}/", headers={"Host": f"localhost:{port}"})[0] == 200
  assert call(f"{url}/api/label", body, headers={"Origin": url})[0] == 200


def test_ids_on_the_wire_tell_nothing_and_only_the_holder_may_label(
    annotation_server, annotation_pairs):
  items = items_from_dataset(annotation_pairs, "pairs")
  store, url = annotation_server(items=items + gold_items(items, 4))
  seen = set()
  while not (nxt := call(f"{url}/api/next?annotator=ann")[1])["done"]:
    assert re.fullmatch(r"[0-9a-f]{20}", nxt["pair"]), nxt["pair"]
    seen.add(store.by_public[nxt["pair"]])
    call(f"{url}/api/label", {"annotator": "ann", "pair": nxt["pair"], "segments": ["tie", "tie"]})
  assert {i for i in seen if i.startswith("gold-")} == {it.id for it in store.items.values()
                                                        if it.gold is not None}
  # A pair never handed to bob: refused, whatever id he guesses right.
  status, out = call(f"{url}/api/label", {"annotator": "bob", "pair": store.public["p0"],
                                          "segments": ["left", "left"]})
  assert status == 409 and "was not handed to bob" in out["error"] and "p0" not in out["error"]
  # A lease that expired and went to someone else: the late submission is refused, once labeled.
  clock = [0.0]
  store, url = annotation_server(out="other.jsonl", clock=lambda: clock[0])
  first = call(f"{url}/api/next?annotator=slow")[1]["pair"]
  clock[0] = 10_000.0
  assert call(f"{url}/api/next?annotator=fast")[1]["pair"] == first
  assert label(url, "fast")[0] == 200
  status, out = call(f"{url}/api/label", {"annotator": "slow", "pair": first,
                                          "segments": ["left", "left"]})
  assert status == 409 and "take the next pair" in out["error"]
  assert call(f"{url}/api/next?annotator=slow")[1]["pair"] != first  # Moved on, not stuck.


def test_slow_and_malformed_clients_get_a_400_or_are_dropped(annotation_server, monkeypatch):
  monkeypatch.setattr(server_lib, "READ_TIMEOUT_S", 0.5)
  store, url = annotation_server()
  pid = call(f"{url}/api/next?annotator=ann")[1]["pair"]
  for raw, want in ((b"[" * 60000, "not valid JSON"),
                    (b'{"annotator": "ann", "pair": "%s", "segments": ["left", "tie"], '
                     b'"seconds": %s}' % (pid.encode(), b"9" * 5000), "not valid JSON"),
                    (b'{"annotator": "ann", "pair": "%s", "segments": ["left", "tie"], '
                     b'"seconds": NaN}' % pid.encode(), "seconds")):
    status, out = call(f"{url}/api/label", raw)
    assert status == 400 and want in out["error"], (raw[:40], out)
  # A Content-Length of digits that are not ASCII ('\xb2' is a superscript two): a 400.
  with socket.create_connection((url[len("http://"):].split(":")[0], int(url.rsplit(":", 1)[1])),
                                timeout=10) as sock:
    sock.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: "
                 b"application/json\r\nContent-Length: \xb2\r\n\r\n{}" % url.rsplit(":", 1)[1].encode())
    assert sock.recv(1024).startswith(b"HTTP/1.0 400")
  # Slow-loris: headers and one body byte, then silence; the server hangs up.
  host, port = url[len("http://"):].split(":")
  with socket.create_connection((host, int(port)), timeout=10) as sock:
    sock.sendall(b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Type: "
                 b"application/json\r\nContent-Length: 100\r\n\r\n{" % port.encode())
    start = time.monotonic()
    assert sock.recv(1024) == b""  # Closed without an answer.
    assert time.monotonic() - start < 5
  assert label(url, "ann")[0] == 200  # Still serving.


def test_a_leases_file_that_cannot_be_written_is_said_once(annotation_pairs, tmp_path,
                                                           monkeypatch, capsys):
  """Leases still work in memory when the disk is full; the server says so once, not once a
  request, and again only after a write has succeeded in between."""
  import errno
  from densedpo_jax import distributed
  from densedpo_jax.annotate.store import Store
  store = Store(items_from_dataset(annotation_pairs, "pairs"), str(tmp_path / "labels.jsonl"))

  def full(path, text):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(distributed, "write_text", full)
  held = [store.next_pair(who).id for who in ("ann", "bob", "ann")]
  assert held[0] == held[2] != held[1]  # The leases work without the file.
  assert capsys.readouterr().out.count("labels.jsonl.leases.json not written") == 1
