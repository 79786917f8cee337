"""The quality-motion trade-off at a glance: each arm minus the base model, as a picture.

Every arm of an experiment call is a point per evaluation seed: x is its fast-share change and y
its visual-quality change against the pretrained model, each a paired bootstrap mean over
prompts with its 95% interval as a bar (stats.py). The base model is the origin (a black cross).
A remedy for DenseDPO's slowdown moves a point right of DenseDPO's without moving it down;
points right of x = 0 keep the base model's motion. Drawn with PIL (no plotting dependency):

    save_figure("tradeoff.png", tradeoff_points(arms, by_arm, eval_seeds))
"""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw

from densedpo_jax.metrics.bootstrap import bootstrap_diff
from projects.shapesworld_paper import stats

X_METRIC, Y_METRIC = "fast_share", "visual_quality"
# Colour-blind-safe (Okabe-Ito) then greys: one colour an arm, in the order of the call.
PALETTE = ((0, 114, 178), (213, 94, 0), (0, 158, 115), (204, 121, 167), (230, 159, 0),
           (86, 180, 233), (240, 228, 66), (120, 120, 120), (60, 60, 60), (170, 170, 170))
# More arms than colours: the colours come round again with the next shape.
SHAPES = ("disc", "square", "diamond", "triangle")
STEPS = (0.001, 0.002, 0.0025, 0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25, 0.5)


def tradeoff_points(arms: dict[str, str], by_arm: dict[str, list[dict]],
                    eval_seeds: Sequence[str]) -> list[dict]:
  """One point per trained arm and evaluation seed: {'arm', 'title', 'seed', 'x': (mean, lo,
  hi), 'y': (mean, lo, hi)}, the arm minus 'pretrained' in fast share and visual quality."""
  if "pretrained" not in by_arm:
    raise ValueError("the trade-off figure needs the 'pretrained' arm (its origin)")
  out = []
  for arm, title in arms.items():
    if arm == "pretrained" or arm not in by_arm:
      continue
    for s in eval_seeds:
      xy = [bootstrap_diff(stats.prompt_means(by_arm[arm], m, s),
                           stats.prompt_means(by_arm["pretrained"], m, s))
            for m in (X_METRIC, Y_METRIC)]
      out.append({"arm": arm, "title": title, "seed": s, "x": tuple(xy[0]), "y": tuple(xy[1])})
  return out


def nice_ticks(lo: float, hi: float, max_ticks: int = 8) -> list[float]:
  """The multiples in [lo, hi] of the smallest step of STEPS that gives at most `max_ticks`."""
  span = max(hi - lo, 1e-9)
  step = next((s for s in STEPS if span / s <= max_ticks - 1), STEPS[-1])
  first = math.ceil(lo / step - 1e-9) * step
  ticks, k = [], 0
  while first + k * step <= hi + 1e-12:
    ticks.append(round(first + k * step, 10))
    k += 1
  return ticks


def arm_style(index: int) -> tuple[tuple[int, int, int], str]:
  """The colour and marker shape of the `index`-th arm of a figure: every arm its own pair."""
  return PALETTE[index % len(PALETTE)], SHAPES[index // len(PALETTE) % len(SHAPES)]


def draw_marker(d: ImageDraw.ImageDraw, shape: str, px: float, py: float, r: float, colour,
                filled: bool) -> None:
  """One marker of `shape` centred at (px, py), filled or as an outline."""
  paint = {"fill": colour} if filled else {"outline": colour, "width": 2}
  if shape == "disc":
    d.ellipse([px - r, py - r, px + r, py + r], **paint)
    return
  corners = {"square": [(-r, -r), (r, -r), (r, r), (-r, r)],
             "diamond": [(0, -1.3 * r), (1.3 * r, 0), (0, 1.3 * r), (-1.3 * r, 0)],
             "triangle": [(0, -1.3 * r), (1.2 * r, r), (-1.2 * r, r)]}[shape]
  d.polygon([(px + dx, py + dy) for dx, dy in corners], **paint)


class Axes:
  """Data (x, y) -> pixel (px, py) inside a plot box of `size` with `margin` (left, top, right,
  bottom), y up; the ranges span every bar and the origin with a tenth of padding."""

  def __init__(self, points: Sequence[dict], size=(860, 520), margin=(80, 30, 350, 60)):
    xs = [v for p in points for v in p["x"]] + [0.0]
    ys = [v for p in points for v in p["y"]] + [0.0]
    pad = lambda a, b: (a - 0.1 * max(b - a, 1e-3), b + 0.1 * max(b - a, 1e-3))
    self.xlim, self.ylim = pad(min(xs), max(xs)), pad(min(ys), max(ys))
    self.size, self.margin = size, margin
    self.box = (margin[0], margin[1], size[0] - margin[2], size[1] - margin[3])

  def __call__(self, x: float, y: float) -> tuple[float, float]:
    x0, y0, x1, y1 = self.box
    fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
    fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
    return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)


def save_figure(path: str, points: Sequence[dict]) -> Axes:
  """Draws `points` (tradeoff_points) as a PNG at `path`; returns its Axes (data -> pixels).

  A filled marker is the first evaluation seed, an outline the others; each arm has its own
  colour and shape (`arm_style`), which the legend on the right names."""
  if not points:
    raise ValueError("no trained arm to draw: the trade-off figure needs at least one")
  ax = Axes(points)
  img = Image.new("RGB", ax.size, "white")
  d = ImageDraw.Draw(img)
  x0, y0, x1, y1 = ax.box
  grey, black = (225, 225, 225), (0, 0, 0)
  for t in nice_ticks(*ax.xlim):
    px, _ = ax(t, 0)
    if x0 <= px <= x1:
      d.line([(px, y0), (px, y1)], fill=grey)
      d.text((px - 14, y1 + 6), f"{t:+.3g}", fill=black)
  for t in nice_ticks(*ax.ylim):
    _, py = ax(0, t)
    if y0 <= py <= y1:
      d.line([(x0, py), (x1, py)], fill=grey)
      d.text((x0 - 48, py - 6), f"{t:+.3g}", fill=black)
  ox, oy = ax(0, 0)
  d.line([(ox, y0), (ox, y1)], fill=(150, 150, 150))
  d.line([(x0, oy), (x1, oy)], fill=(150, 150, 150))
  d.rectangle(ax.box, outline=black)
  d.text((x0, y1 + 26), "fast share minus the base model's (right: more fast clips)", fill=black)
  d.text((x0, 8), "visual quality minus the base model's (up: better); bars: 95% paired "
         "bootstrap intervals over prompts", fill=black)
  seeds = sorted({p["seed"] for p in points}, key=[p["seed"] for p in points].index)
  styles = {}
  for p in points:
    colour, shape = styles.setdefault(p["arm"], arm_style(len(styles)))
    (xm, xlo, xhi), (ym, ylo, yhi) = p["x"], p["y"]
    px, py = ax(xm, ym)
    d.line([ax(xlo, ym), ax(xhi, ym)], fill=colour, width=2)
    d.line([ax(xm, ylo), ax(xm, yhi)], fill=colour, width=2)
    draw_marker(d, shape, px, py, 5, colour, filled=p["seed"] == seeds[0])
  d.line([(ox - 7, oy - 7), (ox + 7, oy + 7)], fill=black, width=3)
  d.line([(ox - 7, oy + 7), (ox + 7, oy - 7)], fill=black, width=3)
  lx, ly = x1 + 16, y0
  d.text((lx, ly), "x  base model (origin)", fill=black)
  d.text((lx, ly + 16), "filled: eval seed " + seeds[0]
         + ("; outline: " + ", ".join(seeds[1:]) if len(seeds) > 1 else ""), fill=black)
  titles = {p["arm"]: p["title"] for p in points}
  for i, (arm, (colour, shape)) in enumerate(styles.items()):
    y = ly + 40 + 16 * i
    draw_marker(d, shape, lx + 4, y + 6, 4, colour, filled=True)
    d.text((lx + 14, y), titles[arm][:52], fill=black)
  img.save(path)
  return ax
