"""The annotation page: its server over real HTTP on 127.0.0.1, the report, and a real headless
browser (Debian's chromium driven by Playwright) labeling a pair with the keyboard."""
import json
import os

import numpy as np
import pytest

from densedpo_jax.annotate import report as report_lib
from densedpo_jax.annotate.server import make_server, to_record_labels
from densedpo_jax.annotate.store import Store, gold_items, items_from_dataset
from densedpo_jax.data import labels_io
from tests.helpers import http_call as call, serve_in_thread as start

CHROMIUM = "/usr/bin/chromium"


def test_a_label_is_written_and_imports_in_the_records_order(
    annotation_server, annotation_pairs, tmp_path):
  store, url = annotation_server()
  status, nxt = call(f"{url}/api/next?annotator=alice")
  assert status == 200 and nxt["num_segments"] == 2 and nxt["num_frames"] == 4
  status, png = call(f"{url}/api/frames?pair={nxt['pair']}&side=left&annotator=alice")
  assert status == 200 and png[:4] == b"\x89PNG"
  status, out = call(f"{url}/api/label", {"annotator": "alice", "pair": nxt["pair"],
                                          "segments": ["left", "tie"], "whole": "left",
                                          "seconds": 12.5})
  assert status == 200 and out["ok"]
  pid = store.by_public[nxt["pair"]]  # Ids on the wire are opaque; the file keeps the real one.
  swapped = store.swap(pid, "alice")
  want = [-1, 0] if swapped else [1, 0]  # Left is b when swapped.
  parsed = labels_io.parse_labels(str(tmp_path / "labels.jsonl"), {pid: 2})
  assert parsed[pid]["segment_labels"].tolist() == want
  assert parsed[pid]["global_label"] == want[0]
  line = json.loads(open(tmp_path / "labels.jsonl").read())
  assert line["annotator"] == "alice" and line["swapped"] == swapped and line["seconds"] == 12.5
  counts = labels_io.import_labels(str(tmp_path / "labels.jsonl"), annotation_pairs, "pairs",
                                   annotation_pairs, "labeled")
  assert counts["labeled"] == 1


def test_bad_input_is_refused_naming_the_field_and_nothing_is_written(annotation_server, tmp_path):
  store, url = annotation_server()
  pid = call(f"{url}/api/next?annotator=bob")[1]["pair"]
  cases = [({"annotator": "b o b", "pair": pid, "segments": ["left", "tie"]}, "annotator"),
           ({"annotator": "bob", "pair": "nope", "segments": ["left", "tie"]}, "pair"),
           ({"annotator": "bob", "pair": pid, "segments": ["left"]}, "segments"),
           ({"annotator": "bob", "pair": pid, "segments": ["left", "up"]}, "segments"),
           ({"annotator": "bob", "pair": pid, "segments": ["left", "tie"], "whole": 3}, "whole"),
           ({"annotator": "bob", "pair": pid, "segments": ["left", "tie"], "comment": "x" * 3000},
            "comment"),
           (b"{not json", "JSON")]
  for body, field in cases:
    status, out = call(f"{url}/api/label", body)
    assert status == 400 and field in out["error"], (body, out)
  assert call(f"{url}/api/next?annotator=..%2F..")[0] == 400
  assert not os.path.exists(tmp_path / "labels.jsonl")
  # A broken pair may come without segment labels.
  status, _ = call(f"{url}/api/label", {"annotator": "bob", "pair": pid, "segments": None,
                                        "broken": True, "comment": "both frozen"})
  assert status == 200


def test_annotators_get_different_pairs_and_a_restart_resumes(
    annotation_server, annotation_pairs, tmp_path):
  store, url = annotation_server()
  a = call(f"{url}/api/next?annotator=alice")[1]["pair"]
  b = call(f"{url}/api/next?annotator=bob")[1]["pair"]
  assert a != b and call(f"{url}/api/next?annotator=alice")[1]["pair"] == a  # Still hers.
  call(f"{url}/api/label", {"annotator": "alice", "pair": a, "segments": ["left", "right"]})
  # A new server over the same file: alice resumes at her first unlabeled pair, never `a` again,
  # and never `b`, which bob still holds.
  store2, url2 = annotation_server()
  seen = set()
  while True:
    nxt = call(f"{url2}/api/next?annotator=alice")[1]
    if nxt["done"]:
      break
    seen.add(nxt["pair"])
    call(f"{url2}/api/label", {"annotator": "alice", "pair": nxt["pair"], "segments": ["left", "right"]})
  assert a not in seen and b not in seen and len(seen) == 4
  # A second submission of the same pair is refused, and nothing is written twice (through
  # either server: the id key survives the restart, so both know `a` by one id).
  a2 = store2.public[store.by_public[a]]
  assert a2 == a
  assert call(f"{url}/api/label", {"annotator": "alice", "pair": a,
                                   "segments": ["left", "left"]})[0] == 409
  assert call(f"{url2}/api/label", {"annotator": "alice", "pair": a2,
                                    "segments": ["left", "left"]})[0] == 409
  # With every pair shown to two people, bob gets pairs alice already did; their two lines import
  # as one label per pair: kept where they agree, a tie where they differ.
  assert call(f"{url2}/api/label", {"annotator": "bob", "pair": b,
                                    "segments": ["tie", "tie"]})[0] == 200  # Bob returns b.
  store3, url3 = annotation_server(double_share=1.0)
  nxt = call(f"{url3}/api/next?annotator=bob")[1]
  pid = store3.by_public[nxt["pair"]]
  alice = [json.loads(line) for line in open(tmp_path / "labels.jsonl")
           if json.loads(line)["id"] == pid][0]["segment_labels"]
  bob = [alice[0], -alice[1]]  # Agrees on segment 1, not on segment 2.
  screen = to_record_labels(bob, store3.swap(pid, "bob"))  # Its own inverse.
  choice = {1: "left", -1: "right"}
  assert call(f"{url3}/api/label", {"annotator": "bob", "pair": nxt["pair"],
                                    "segments": [choice[v] for v in screen]})[0] == 200
  parsed = labels_io.parse_labels(str(tmp_path / "labels.jsonl"), {p: 2 for p in store3.items})
  assert parsed[pid]["segment_labels"].tolist() == [alice[0], 0]


def test_a_restart_keeps_each_pair_with_the_annotator_holding_it(annotation_server, tmp_path):
  """The server restarts while alice and bob each hold a pair: each gets the same pair back under
  the same id, submits it, and nobody else is handed it meanwhile (one label wanted a pair)."""
  clock = [0.0]
  _, url = annotation_server(clock=lambda: clock[0])
  held = {who: call(f"{url}/api/next?annotator={who}")[1]["pair"] for who in ("alice", "bob")}
  clock[0] = 60.0  # A minute on: the leases are live.
  store2, url2 = annotation_server(clock=lambda: clock[0])
  carol = set()
  while not (nxt := call(f"{url2}/api/next?annotator=carol")[1])["done"]:
    carol.add(nxt["pair"])
    assert call(f"{url2}/api/label", {"annotator": "carol", "pair": nxt["pair"],
                                      "segments": ["tie", "tie"]})[0] == 200
  assert carol.isdisjoint(held.values()) and len(carol) == 4
  for who, pid in held.items():
    assert call(f"{url2}/api/next?annotator={who}")[1]["pair"] == pid
    assert call(f"{url2}/api/label", {"annotator": who, "pair": pid,
                                      "segments": ["left", "right"]})[0] == 200
  lines = [json.loads(line) for line in open(tmp_path / "labels.jsonl")]
  assert sorted(d["id"] for d in lines) == sorted(store2.items)  # Six pairs, one line each.
  # A leases file that cannot be read is named; the labels still resume from the label file.
  (tmp_path / "labels.jsonl.leases.json").write_text("{not json")
  store3, _ = annotation_server()
  assert any("labels.jsonl.leases.json: unreadable" in n for n in store3.notes)
  assert all(len(d) == 1 for d in store3.done.values())


def test_a_token_is_required_off_loopback_and_no_path_escapes(annotation_pairs, tmp_path):
  store = Store(items_from_dataset(annotation_pairs, "pairs"), str(tmp_path / "l.jsonl"))
  with pytest.raises(ValueError, match="token"):
    make_server(store, "0.0.0.0", 0)
  server, url = start(store, host="0.0.0.0", token="s3cret")
  try:
    assert call(f"{url}/api/next?annotator=a")[0] == 403
    assert call(f"{url}/api/next?annotator=a&token=wrong")[0] == 403
    assert call(f"{url}/api/label", {"annotator": "a", "pair": "p0"})[0] == 403
    # The page's files hold no data: the browser loads them with the page.
    assert call(f"{url}/")[0] == 200 and call(f"{url}/static/app.js")[0] == 200
    assert call(f"{url}/api/next?annotator=a", headers={"X-Token": "s3cret"})[0] == 200
    for path in ("/static/../server.py", "/static/%2e%2e/server.py", "/../../etc/passwd",
                 "/static/app.js/../../store.py", "/api/frames?pair=../../etc&side=left&annotator=a"):
      status, body = call(f"{url}{path}{'&' if '?' in path else '?'}token=s3cret")
      assert status in (400, 404) and b"import" not in json.dumps(body).encode()
  finally:
    server.shutdown()
    server.server_close()


def test_gold_pairs_and_the_report(annotation_pairs, tmp_path, capsys):
  items = items_from_dataset(annotation_pairs, "pairs")
  gold = gold_items(items, 2)
  assert gold[0].gold == [0, 0] and np.array_equal(gold[0].frames[0], gold[0].frames[1])
  assert sorted(abs(v) for v in gold[1].gold) == [0, 1]
  lines = [
      {"id": "p0", "annotator": "a", "segment_labels": [1, 0], "seconds": 10},
      {"id": "p0", "annotator": "b", "segment_labels": [1, -1], "seconds": 30},
      {"id": "p1", "annotator": "a", "segment_labels": [-1, 1], "seconds": 20},
      {"id": "p1", "annotator": "b", "segment_labels": [-1, 1], "seconds": 40},
      {"id": "g", "annotator": "a", "segment_labels": [0, 1], "gold": [0, 1], "seconds": 5},
      {"id": "g", "annotator": "b", "segment_labels": [0, -1], "gold": [0, 1], "seconds": 5}]
  r = report_lib.report(lines)
  assert r["annotators"]["a"]["gold_agreement"] == 1.0 and r["annotators"]["b"]["gold_agreement"] == 0.5
  assert r["annotators"]["a"]["pairs"] == 3 and r["annotators"]["b"]["median_seconds"] == 30
  # Kappa by hand: first [1, 0, -1, 1], second [1, -1, -1, 1]; observed 3/4; marginals
  # first (-1: 1/4, 0: 1/4, 1: 1/2), second (-1: 1/2, 0: 0, 1: 1/2): expected 1/8 + 0 + 1/4.
  assert r["kappa"] == pytest.approx((0.75 - 0.375) / (1 - 0.375))
  assert r["double_labeled_pairs"] == 2 and len(r["kappa_by_segment"]) == 2
  # `python -m densedpo_jax.annotate report FILE` prints that report as a table.
  from densedpo_jax.annotate import __main__ as annotate_tool
  path = tmp_path / "labels.jsonl"
  path.write_text("".join(json.dumps(line) + "\n" for line in lines))
  annotate_tool.main(["report", str(path)])
  out = capsys.readouterr().out
  assert "| a | 3 |" in out and "| b | 3 |" in out and "50.0%" in out


@pytest.mark.e2e
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is absent (apt-get install chromium)")
def test_a_person_labels_a_pair_with_the_keyboard_in_a_real_browser(annotation_server, tmp_path):
  playwright = pytest.importorskip("playwright.sync_api")
  store, url = annotation_server()
  with playwright.sync_playwright() as p:
    # A fresh user-data dir; never a downloaded browser.
    context = p.chromium.launch_persistent_context(
        str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True,
        viewport={"width": 1000, "height": 900},
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update"])
    try:
      page = context.new_page()
      page.goto(f"{url}/?annotator=carol")
      page.wait_for_function("document.body.dataset.ready && document.body.dataset.ready.length > 0",
                             timeout=20000)
      pid = page.evaluate("document.body.dataset.ready")
      page.keyboard.press("ArrowRight")
      page.keyboard.press("1")  # Segment 1: left better.
      page.keyboard.press("0")  # Segment 2: tie.
      page.screenshot(path=str(tmp_path / "annotate_page.png"))
      page.keyboard.press("Enter")
      page.wait_for_function(f"document.body.dataset.ready && document.body.dataset.ready !== {json.dumps(pid)}",
                             timeout=20000)
    finally:
      context.close()
  os.makedirs("test-artifacts", exist_ok=True)
  os.replace(tmp_path / "annotate_page.png", os.path.join("test-artifacts", "annotate_page.png"))
  line = json.loads(open(tmp_path / "labels.jsonl").readline())
  assert line["id"] == store.by_public[pid] and line["annotator"] == "carol"
  assert line["segment_labels"] == to_record_labels([1, 0], store.swap(line["id"], "carol"))
