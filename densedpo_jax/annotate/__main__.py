"""Label pairs in the browser, or report on the labels.

    python -m densedpo_jax.annotate --pairs=DIR/NAME --out=labels.jsonl [--port=8765]
        [--host=127.0.0.1 --token=SECRET] [--double_share=0.1] [--gold=8] [--videos_dir=DIR]
    python -m densedpo_jax.annotate report labels.jsonl

The label file attaches to the pairs with `task=label` and `labeler=jsonl`. argparse, as the
other tools that take paths (no config file here).
"""
import argparse
import os
import secrets
import sys

from densedpo_jax import console
from densedpo_jax.annotate import report as report_lib
from densedpo_jax.annotate.server import is_loopback, make_server
from densedpo_jax.annotate.store import Store, gold_items, items_from_dataset


def serve(argv) -> None:
  parser = argparse.ArgumentParser(description="Serve the annotation page.")
  parser.add_argument("--pairs", required=True, help="DIR/NAME of a pair dataset")
  parser.add_argument("--out", required=True, help="the JSONL label file (appended to)")
  parser.add_argument("--host", default="127.0.0.1")
  parser.add_argument("--port", type=int, default=8765)
  parser.add_argument("--token", default=None, help="required off loopback; 'auto' makes one")
  parser.add_argument("--double_share", type=float, default=0.0,
                      help="share of pairs shown to two annotators (inter-annotator agreement)")
  parser.add_argument("--gold", type=int, default=0, help="gold pairs mixed in (known answers)")
  parser.add_argument("--videos_dir", default="", help="decoded videos of latent pairs "
                      "(python -m densedpo_jax.decode output); ShapesWorld pairs need none")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  directory, name = os.path.split(os.path.normpath(args.pairs))
  decoder = None
  if args.videos_dir:
    from densedpo_jax.labeling.task import videos_decoder
    decoder = videos_decoder(args.videos_dir)
  items = items_from_dataset(directory or ".", name, decoder)
  items += gold_items(items, args.gold, args.seed) if args.gold else []
  token = secrets.token_urlsafe(16) if args.token == "auto" else args.token
  store = Store(items, args.out, args.double_share, args.seed)
  for note in store.notes:
    print(f"annotate: {note}", flush=True)
  server = make_server(store, args.host, args.port, token)
  url = f"http://{args.host}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
  print(f"annotate: {len(items)} pairs ({args.gold} gold) from {args.pairs}; labels -> {args.out}\n"
        f"open {url}" + ("" if is_loopback(args.host) else "  (share the token only with annotators)"),
        flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    server.server_close()


def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  try:
    run(argv)
  except console.JobError as e:  # A label file that cannot be read: one line naming file:line.
    raise SystemExit(f"error: {e}") from None


def run(argv) -> None:
  if argv[:1] == ["report"]:
    parser = argparse.ArgumentParser(description="Report on an annotation label file.")
    parser.add_argument("labels")
    args = parser.parse_args(argv[1:])
    print(report_lib.format_report(report_lib.report(report_lib.read_lines(args.labels))))
  else:
    serve(argv)


if __name__ == "__main__":
  main()
