"""ShapesWorld: a procedural text-to-video world small enough for a laptop CPU.

Every video shows one coloured shape (circle, square or triangle) on a black
background, moving in a straight line and bouncing off the walls. A scene is
fully determined by an integer seed: colour, shape and initial direction come
from the prompt combination, while the start position and the speed (pixels a
frame, NOT named in the prompt) are drawn from the seed. So the same prompt
covers slow and fast clips, which is what lets a base model's artifacts grow with
speed (docs/shapesworld.md).

Conventions:
  - A video is float32 `[T, H, W, 3]` (channels last), values in [-1, 1]:
    -1 is black, +1 full intensity. `T = WorldConfig.num_frames`.
  - Positions are `(y, x)` in pixel units; pixel `(i, j)` has its centre at
    `(i + 0.5, j + 0.5)`, so a frame spans `[0, H] x [0, W]`.
  - All shapes of one radius have the same area (pi * radius**2) so a judge can
    check size without knowing the shape.
  - The prompt names the INITIAL direction of motion; after a bounce the shape
    moves the other way. `trajectory` returns the per-frame positions and
    velocities for judges that need them.

Train / held-out split: a fixed eighth of the colour x shape x direction
combinations (`is_heldout`) never appears in the training split, while every
single colour, shape and direction does; evaluating on held-out prompts tests
composition rather than memorisation.

Extension points for artifacts and the judge: `shape_mask` (the exact coverage of
one shape at one position) and `render_frames` (render arbitrary per-frame
positions, colours and radii) are the building blocks to corrupt frames or to
fit a clean rendering to a generated frame.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

# Colours in [0, 1] RGB; well separated so a pixel judge can tell them apart.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Unit direction vectors as (dy, dx), y pointing down the image.
_S = 1.0 / math.sqrt(2.0)
DIRECTIONS: dict[str, tuple[float, float]] = {
    "right": (0.0, 1.0),
    "left": (0.0, -1.0),
    "up": (-1.0, 0.0),
    "down": (1.0, 0.0),
    "up-right": (-_S, _S),
    "up-left": (-_S, -_S),
    "down-right": (_S, _S),
    "down-left": (_S, -_S),
}
_DIRECTION_PHRASES = {
    "right": "to the right",
    "left": "to the left",
    "up": "up",
    "down": "down",
    "up-right": "up and to the right",
    "up-left": "up and to the left",
    "down-right": "down and to the right",
    "down-left": "down and to the left",
}
SPLITS = ("train", "heldout", "all")


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Sizes and ranges of the world.

  Attributes:
    num_frames: frames a video (T).
    height, width: frame size in pixels.
    fps: nominal frame rate (frames a second), stored as metadata.
    radius: shape radius in pixels (a circle's radius; squares and triangles
      have the same area).
    speed_range: (min, max) speed in pixels a frame, drawn uniformly.
    supersample: sub-pixel grid per axis for anti-aliased edges (1 = hard edges).
  """
  num_frames: int = 16
  height: int = 16
  width: int = 16
  fps: float = 8.0
  radius: float = 3.0
  speed_range: tuple[float, float] = (0.2, 1.5)
  supersample: int = 8

  def __post_init__(self):
    if self.num_frames < 1 or self.height < 1 or self.width < 1:
      raise ValueError(f"WorldConfig: sizes must be positive, got {self}")
    lo, hi = self.speed_range
    if not 0.0 <= lo <= hi:
      raise ValueError(f"WorldConfig.speed_range must satisfy 0 <= min <= max, got {self.speed_range}")
    if 2 * extent(self.radius) >= min(self.height, self.width):
      raise ValueError(f"WorldConfig.radius {self.radius} does not fit a {self.height}x{self.width} frame")
    if self.supersample < 1:
      raise ValueError(f"WorldConfig.supersample must be >= 1, got {self.supersample}")


@dataclasses.dataclass(frozen=True)
class Scene:
  """Everything needed to render one video (the world's full latent state).

  Attributes:
    colour, shape, direction: the prompt's combination (keys of COLOURS, SHAPES,
      DIRECTIONS).
    speed: pixels a frame (not in the prompt).
    start: (y, x) centre at frame 0, in pixels.
    seed: the seed the scene was drawn from (-1 if built by hand).
  """
  colour: str
  shape: str
  direction: str
  speed: float
  start: tuple[float, float]
  seed: int = -1

  @property
  def prompt(self) -> str:
    return prompt_for(self.colour, self.shape, self.direction)


def prompt_for(colour: str, shape: str, direction: str) -> str:
  """E.g. `prompt_for('red', 'circle', 'right') == 'a red circle moves to the right'`."""
  return f"a {colour} {shape} moves {_DIRECTION_PHRASES[direction]}"


def all_combos() -> list[tuple[str, str, str]]:
  """Every (colour, shape, direction), in a fixed order."""
  return [(c, s, d) for c in COLOURS for s in SHAPES for d in DIRECTIONS]


def is_heldout(colour: str, shape: str, direction: str) -> bool:
  """Whether a combination belongs to the held-out prompts (about one in eight).

  The rule `(colour + 3 * shape + 5 * direction) % 8 == 7` on the indices holds out
  at most one colour for any (shape, direction), so every colour, shape and
  direction still occurs in training.
  """
  ci = list(COLOURS).index(colour)
  si = SHAPES.index(shape)
  di = list(DIRECTIONS).index(direction)
  return (ci + 3 * si + 5 * di) % 8 == 7


def combos(split: str) -> list[tuple[str, str, str]]:
  """The combinations of a split: 'train', 'heldout' or 'all'."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  if split == "all":
    return all_combos()
  want_heldout = split == "heldout"
  return [c for c in all_combos() if is_heldout(*c) == want_heldout]


def prompts(split: str) -> list[str]:
  """The prompts of a split, in a fixed order."""
  return [prompt_for(*c) for c in combos(split)]


def extent(radius: float, shape: str = "triangle") -> float:
  """Half-size of a shape's bounding box in pixels (the widest shape by default).

  Keeping a centre at least this far from every wall keeps the shape in frame.
  """
  if shape == "circle":
    return radius
  if shape == "square":
    return _square_half_side(radius)
  # Equilateral triangle: circumradius R; its bounding box is R tall either side
  # of the centroid at most.
  return _triangle_circumradius(radius)


def _square_half_side(radius: float) -> float:
  return radius * math.sqrt(math.pi) / 2.0  # (2s)^2 == pi r^2


def _triangle_circumradius(radius: float) -> float:
  return radius * math.sqrt(4.0 * math.pi / (3.0 * math.sqrt(3.0)))  # area == pi r^2


def sample_scene(seed: int, config: WorldConfig = WorldConfig(), split: str = "train") -> Scene:
  """Draws a scene deterministically from `seed` among the combinations of `split`."""
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A9E]))
  options = combos(split)
  colour, shape, direction = options[int(rng.integers(len(options)))]
  lo, hi = config.speed_range
  speed = float(rng.uniform(lo, hi))
  margin = extent(config.radius)
  y = float(rng.uniform(margin, config.height - margin))
  x = float(rng.uniform(margin, config.width - margin))
  return Scene(colour, shape, direction, speed, (y, x), int(seed))


def _fold(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
  """Reflects unconstrained positions `u` into [lo, hi] (a triangle wave)."""
  length = hi - lo
  if length <= 0:
    return np.full_like(u, lo)
  r = np.mod(u - lo, 2.0 * length)
  return lo + np.where(r <= length, r, 2.0 * length - r)


def trajectory(scene: Scene, config: WorldConfig = WorldConfig()) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame centres and velocities of a scene.

  The shape moves at constant speed along its direction and bounces elastically
  off the walls (reflection keeps its whole body in frame).

  Returns:
    positions: float32 `[T, 2]` centres (y, x) in pixels.
    velocities: float32 `[T, 2]` (dy, dx) in pixels a frame (the sign flips at a bounce).
  """
  t = np.arange(config.num_frames, dtype=np.float64)
  dy, dx = DIRECTIONS[scene.direction]
  margin = extent(config.radius, scene.shape)
  pos, vel = [], []
  for axis, (d, size) in enumerate(((dy, config.height), (dx, config.width))):
    lo, hi = margin, size - margin
    u = scene.start[axis] + scene.speed * d * t
    p = _fold(u, lo, hi)
    # Velocity: the sign of the triangle wave's slope at each frame.
    eps = 1e-6
    p_next = _fold(u + eps * np.sign(d if d else 1.0), lo, hi)
    v = np.sign(p_next - p) * abs(scene.speed * d)
    pos.append(p)
    vel.append(v)
  return (np.stack(pos, -1).astype(np.float32), np.stack(vel, -1).astype(np.float32))


def shape_mask(shape: str, centre: Sequence[float], radius: float, height: int, width: int,
               supersample: int = 8) -> np.ndarray:
  """Coverage of one shape in `[0, 1]`, float32 `[H, W]` (share of each pixel inside it).

  Args:
    shape: one of SHAPES.
    centre: (y, x) in pixels.
    radius: the circle-equivalent radius (all shapes share the area pi r^2).
    height, width: frame size.
    supersample: sub-pixel samples per axis (1 = hard edges, pixel centres only).
  """
  k = int(supersample)
  offs = (np.arange(k) + 0.5) / k
  ys = (np.arange(height)[:, None] + offs[None, :]).reshape(-1) - float(centre[0])
  xs = (np.arange(width)[:, None] + offs[None, :]).reshape(-1) - float(centre[1])
  y, x = ys[:, None], xs[None, :]
  if shape == "circle":
    inside = y * y + x * x <= radius * radius
  elif shape == "square":
    s = _square_half_side(radius)
    inside = (np.abs(y) <= s) & (np.abs(x) <= s)
  elif shape == "triangle":
    # Upward equilateral triangle with centroid at the centre: apex at -R (up),
    # base at +R/2; inside when below both slanted edges and above the base.
    big_r = _triangle_circumradius(radius)
    half_base = big_r * math.sqrt(3.0) / 2.0
    # Edge from apex (-R, 0) to (R/2, +-half_base): |x| <= (y + R) * half_base / (1.5 R).
    inside = (y <= big_r / 2.0) & (np.abs(x) <= (y + big_r) * half_base / (1.5 * big_r))
  else:
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
  return inside.reshape(height, k, width, k).mean(axis=(1, 3)).astype(np.float32)


def render_frames(shape: str, positions: np.ndarray, colours: np.ndarray, radii: np.ndarray,
                  config: WorldConfig = WorldConfig()) -> np.ndarray:
  """Renders one shape per frame with per-frame centre, colour and radius.

  Args:
    shape: one of SHAPES.
    positions: `[T, 2]` centres (y, x) in pixels.
    colours: `[T, 3]` RGB in [0, 1].
    radii: `[T]` radii in pixels.
    config: frame size and supersampling.

  Returns:
    float32 `[T, H, W, 3]` in [-1, 1] on a black (-1) background.
  """
  frames = []
  for p, c, r in zip(np.asarray(positions), np.asarray(colours), np.asarray(radii)):
    cov = shape_mask(shape, p, float(r), config.height, config.width, config.supersample)
    frames.append(cov[..., None] * np.asarray(c, np.float32)[None, None, :])
  video = np.stack(frames).astype(np.float32)
  return 2.0 * video - 1.0


def render(scene: Scene, config: WorldConfig = WorldConfig()) -> np.ndarray:
  """The clean video of a scene: float32 `[T, H, W, 3]` in [-1, 1]."""
  positions, _ = trajectory(scene, config)
  t = config.num_frames
  colours = np.tile(np.asarray(COLOURS[scene.colour], np.float32), (t, 1))
  radii = np.full((t,), config.radius, np.float32)
  return render_frames(scene.shape, positions, colours, radii, config)


def generate(seed: int, config: WorldConfig = WorldConfig(), split: str = "train") -> tuple[np.ndarray, Scene]:
  """`(video [T, H, W, 3] float32 in [-1, 1], scene)` for `seed`, deterministically."""
  scene = sample_scene(seed, config, split)
  return render(scene, config), scene
