"""AutoAugment's CIFAR-10 policy as pure JAX functions of a PRNG key, for a compiled train step.

AutoAugment (Cubuk et al., CVPR 2019, "AutoAugment: Learning Augmentation Strategies from Data")
found 25 sub-policies for CIFAR-10; each is two `(operation, probability, magnitude bin)` pairs.
Per image, one sub-policy is drawn uniformly; each of its two operations is applied with its
probability, in order. The GALA/BALMS CIFAR code (lt-project `data/autoaugment.py`, the
DeVries-style `CIFAR10Policy`) runs it on PIL images after `RandomCrop(32, 4)` and
`RandomHorizontalFlip()` and before `ToTensor`, `Cutout(1, 16)` and `Normalize`; the operations
here reproduce that code's PIL calls on uint8 `[H, W, C]` RGB images:

* magnitudes: bin `k` of `linspace(lo, hi, 10)`; shear 0..0.3, translate 0..150/331 of the image
  side, rotate 0..30 degrees, colour/contrast/sharpness/brightness 0..0.9 (factor `1 +- m`),
  posterize `round(linspace(8, 4, 10))` bits, solarize threshold `linspace(256, 0, 10)`;
* a random sign on shear, translate and the four enhancement factors (not on rotate);
* fill colour (128, 128, 128) outside the source image for shear, translate and rotate;
* resampling as PIL does it: shear is `Image.transform(AFFINE, BICUBIC)` (PIL's cubic with
  a = -1, clamped borders, result truncated), translate is `AFFINE` with nearest sampling of
  pixel centres (an integer shift by `floor(offset + 1/2)`), rotate is `Image.rotate` (nearest,
  PIL's 16.16 fixed-point affine about the image centre).

Geometric operations take their magnitude as a Python float: their sampling maps are computed
once on the host in float64, with PIL's own arithmetic, so the compiled step only gathers. The
pixel operations take traced parameters. Everything is deterministic in the key; nothing
synchronises with the host.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

FILL = 128  # the official code's fillcolor (128, 128, 128) (and rotate's grey composite)


def _bins(low: float, high: float) -> np.ndarray:
  return np.linspace(low, high, 10)


# Magnitude bins of the official `SubPolicy` (10 per operation).
MAGNITUDES = {
    "shear_x": _bins(0.0, 0.3), "shear_y": _bins(0.0, 0.3),
    "translate_x": _bins(0.0, 150 / 331), "translate_y": _bins(0.0, 150 / 331),
    "rotate": _bins(0.0, 30.0),
    "color": _bins(0.0, 0.9), "contrast": _bins(0.0, 0.9), "sharpness": _bins(0.0, 0.9),
    "brightness": _bins(0.0, 0.9),
    "posterize": np.round(_bins(8.0, 4.0)).astype(np.int64),
    "solarize": _bins(256.0, 0.0),
    "autocontrast": np.zeros(10), "equalize": np.zeros(10), "invert": np.zeros(10),
}

# The 25 CIFAR-10 sub-policies (AutoAugment paper, Table 7), in the official code's order:
# ((op, probability, magnitude bin), (op, probability, magnitude bin)).
CIFAR10_POLICY = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, 1)),
)

# Operations whose magnitude gets a random sign in the official code.
SIGNED = frozenset({"shear_x", "shear_y", "translate_x", "translate_y", "color", "contrast",
                    "sharpness", "brightness"})


def _check_image(image) -> None:
  if jnp.ndim(image) != 3:
    raise ValueError(f"`image` must be [height, width, channels], got shape {jnp.shape(image)}.")


def _as_u8(values):
  """Clamps to [0, 255] and truncates, as PIL's float-to-uint8 stores do."""
  return jnp.floor(jnp.clip(values, 0.0, 255.0)).astype(jnp.uint8)


def _enhance_factor(magnitude: float, sign):
  """`1 + sign * magnitude` computed in float64 on the host, then rounded to float32 (as PIL
  passes its factor to the C blend), chosen by the traced `sign`."""
  up, down = np.float32(1.0 + magnitude), np.float32(1.0 - magnitude)
  return jnp.where(jnp.asarray(sign) > 0, up, down)


# ---------------------------------------------------------------------------------------------
# Geometry: sampling maps computed on the host with PIL's arithmetic (float64 / 16.16 fixed point).


def _pil_floor(v: np.ndarray) -> np.ndarray:
  return np.floor(v).astype(np.int64)


@functools.cache
def _translate_map(offset: float, axis: int, height: int, width: int):
  """Source (row, col, valid) of PIL's nearest `AFFINE` translation by `offset` pixels along
  `axis` (1: x, 0: y). PIL's scale path walks pixel centres: src = COORD(offset + 1/2 + i), the
  position accumulated in float64 one pixel at a time."""
  position, src = offset + 0.5, []
  for _ in range(width if axis == 1 else height):
    src.append(-1 if position < 0 else int(position))
    position += 1.0
  src = np.asarray(src, np.int64)
  rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  if axis == 1:
    cols = src[cols]
  else:
    rows = src[rows]
  valid = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
  return rows.clip(0, height - 1), cols.clip(0, width - 1), valid


def _pil_rotation_matrix(degrees: float, width: int, height: int):
  """The inverse affine map of `Image.rotate(degrees)` (no expand): about (w/2, h/2), with PIL's
  coefficients rounded to 15 decimals."""
  angle = -math.radians(degrees)
  a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
  d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
  cx, cy = width / 2, height / 2
  c = a * -cx + b * -cy + cx
  f = d * -cx + e * -cy + cy
  return (a, b, c, d, e, f)


@functools.cache
def _rotate_map(degrees: float, height: int, width: int):
  """Source (row, col, valid) of PIL's nearest affine transform, in its 16.16 fixed point:
  x_src = (FIX(c + a/2 + b/2) + y FIX(b) + x FIX(a)) >> 16, likewise for y_src."""
  a, b, c, d, e, f = _pil_rotation_matrix(degrees, width, height)

  def fix(v):  # PIL's FIX: 16.16 fixed point
    return math.floor(v * 65536.0 + 0.5)

  a0, a1, a3, a4 = fix(a), fix(b), fix(d), fix(e)
  a2, a5 = fix(c + a * 0.5 + b * 0.5), fix(f + d * 0.5 + e * 0.5)
  ys, xs = np.meshgrid(np.arange(height, dtype=np.int64), np.arange(width, dtype=np.int64),
                       indexing="ij")
  cols = (a2 + ys * a1 + xs * a0) >> 16
  rows = (a5 + ys * a4 + xs * a3) >> 16
  valid = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
  return rows.clip(0, height - 1), cols.clip(0, width - 1), valid


@functools.cache
def _shear_taps(shear: float, axis: int, height: int, width: int):
  """PIL's bicubic `AFFINE` sampling for the shear `(1, s, 0, 0, 1, 0)` (axis 1) or
  `(1, 0, 0, s, 1, 0)` (axis 0): source position of each output pixel centre, 4 clamped taps per
  direction with fractional offsets, and whether the centre falls inside the image (else fill).

  Returns rows i32[H, W, 4], cols i32[H, W, 4], dy f32[H, W], dx f32[H, W], valid bool[H, W].
  """
  yc, xc = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  if axis == 1:
    x_src, y_src = xc + shear * yc, 0.0 * xc + yc
  else:
    x_src, y_src = xc, shear * xc + yc
  valid = (x_src >= 0) & (x_src < width) & (y_src >= 0) & (y_src < height)

  def taps(position, size):
    start = _pil_floor(position - 0.5)
    frac = (position - 0.5) - start
    return np.clip(start[..., None] - 1 + np.arange(4), 0, size - 1), frac

  cols, dx = taps(x_src, width)
  rows, dy = taps(y_src, height)
  return (rows.astype(np.int32), cols.astype(np.int32), dy.astype(np.float32),
          dx.astype(np.float32), valid)


def _gather_nearest(image, rows, cols, valid):
  picked = image[rows, cols]
  return jnp.where(valid[..., None], picked, jnp.asarray(FILL, image.dtype))


def _pil_cubic(v1, v2, v3, v4, d):
  """PIL's cubic through four samples at fraction d (convolution kernel with a = -1), written in
  its Horner form so flat regions stay exact."""
  p2 = v3 - v1
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def _bicubic(image, taps_pos, taps_neg, sign):
  rows, cols, dy, dx, valid = (jnp.where(jnp.asarray(sign) > 0, p, n)
                               for p, n in zip(taps_pos, taps_neg))
  patch = image.astype(jnp.float32)[rows[..., :, None], cols[..., None, :]]  # [H, W, 4, 4, C]
  # Along x within each of the four rows, then along y, as PIL does.
  across = _pil_cubic(*(patch[..., :, k, :] for k in range(4)), dx[..., None, None])
  value = _pil_cubic(*(across[..., k, :] for k in range(4)), dy[..., None])
  return jnp.where(valid[..., None], _as_u8(value), jnp.asarray(FILL, jnp.uint8))


def _shear(image, magnitude: float, sign, axis: int):
  _check_image(image)
  height, width = image.shape[:2]
  return _bicubic(image, _shear_taps(float(magnitude), axis, height, width),
                  _shear_taps(-float(magnitude), axis, height, width), sign)


def shear_x(image, magnitude: float, sign=1):
  """`img.transform(size, AFFINE, (1, sign * magnitude, 0, 0, 1, 0), BICUBIC, fillcolor=128)`:
  the source x of output pixel centre (x, y) is x + sign * magnitude * y.

  Args:
    image: u8[H, W, C].
    magnitude: shear (Python float; 0..0.3 in the policy).
    sign: +1 or -1 (may be traced).

  Returns:
    u8[H, W, C].
  """
  return _shear(image, magnitude, sign, axis=1)


def shear_y(image, magnitude: float, sign=1):
  """`img.transform(size, AFFINE, (1, 0, 0, sign * magnitude, 1, 0), BICUBIC, fillcolor=128)`:
  the source y of output pixel centre (x, y) is y + sign * magnitude * x. u8[H, W, C] -> same."""
  return _shear(image, magnitude, sign, axis=0)


def _translate(image, fraction: float, sign, axis: int):
  _check_image(image)
  height, width = image.shape[:2]
  offset = float(fraction) * (width if axis == 1 else height)
  maps = [_translate_map(s * offset, axis, height, width) for s in (1.0, -1.0)]
  rows, cols, valid = (jnp.where(jnp.asarray(sign) > 0, p, n) for p, n in zip(*maps))
  return _gather_nearest(image, rows, cols, valid)


def translate_x(image, magnitude: float, sign=1):
  """`img.transform(size, AFFINE, (1, 0, sign * magnitude * W, 0, 1, 0), fillcolor=128)` (nearest):
  output column x shows source column floor(x + offset + 1/2), fill outside.

  Args:
    image: u8[H, W, C].
    magnitude: offset as a fraction of the width (Python float; 0..150/331 in the policy).
    sign: +1 or -1 (may be traced).

  Returns:
    u8[H, W, C].
  """
  return _translate(image, magnitude, sign, axis=1)


def translate_y(image, magnitude: float, sign=1):
  """As `translate_x` along rows, with the offset `sign * magnitude * H`. u8[H, W, C] -> same."""
  return _translate(image, magnitude, sign, axis=0)


def rotate(image, degrees: float):
  """The official `rotate_with_fill`: `img.convert("RGBA").rotate(degrees)` (nearest,
  counter-clockwise about the centre, no expand) composited over grey 128, back to RGB.

  Args:
    image: u8[H, W, C].
    degrees: angle (Python float; 0..30 in the policy, never negated there).

  Returns:
    u8[H, W, C].
  """
  _check_image(image)
  return _gather_nearest(image, *_rotate_map(float(degrees), *image.shape[:2]))


# ---------------------------------------------------------------------------------------------
# Pixel operations (traced parameters).


def _luma(image):
  """PIL's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16. u8[H, W, 3] -> i32[H, W]."""
  rgb = image.astype(jnp.int32)
  return (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16


def _rounded(values):
  """`values` (finite float32) rounded to float32 at this point. XLA contracts `d + a * b` into a
  fused multiply-add (one rounding); PIL's C blend rounds the product first, which decides the
  truncated level. A no-op on the bits (min with the +inf pattern) that the compiler cannot see
  through keeps the product rounded."""
  bits = jax.lax.bitcast_convert_type(values, jnp.int32)
  return jax.lax.bitcast_convert_type(jnp.minimum(bits, jnp.int32(0x7F800000)), jnp.float32)


def _blend(degenerate, image, factor):
  """`Image.blend(degenerate, image, factor)`: float32 `d + factor (x - d)` (product rounded
  before the sum, as in PIL's C loop), clipped to [0, 255] and truncated."""
  d = degenerate.astype(jnp.float32)
  difference = (image.astype(jnp.int32) - degenerate.astype(jnp.int32)).astype(jnp.float32)
  return _as_u8(d + _rounded(jnp.asarray(factor, jnp.float32) * difference))


def _check_rgb(image) -> None:
  _check_image(image)
  if image.shape[-1] != 3:
    raise ValueError(f"`image` must be RGB (3 channels), got shape {image.shape}.")


def color(image, factor):
  """`ImageEnhance.Color(img).enhance(factor)`: blend with the image's greyscale (PIL luma)."""
  _check_rgb(image)
  grey = jnp.broadcast_to(_luma(image)[..., None], image.shape)
  return _blend(grey, image, factor)


def contrast(image, factor):
  """`ImageEnhance.Contrast(img).enhance(factor)`: blend with a flat image at the rounded mean
  luma, int(mean(L) + 1/2)."""
  _check_rgb(image)
  luma = _luma(image)
  count = luma.size
  mean = (2 * jnp.sum(luma) + count) // (2 * count)  # int(sum / n + 1/2), in integers
  return _blend(jnp.broadcast_to(mean, image.shape), image, factor)


def brightness(image, factor):
  """`ImageEnhance.Brightness(img).enhance(factor)`: blend with black."""
  _check_image(image)
  return _blend(jnp.zeros_like(image), image, factor)


def _smooth(image):
  """PIL's `ImageFilter.SMOOTH` (3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13, rounded; the border
  rows and columns are copied). Exact in integers: no sum of 13 weights times integers lies on a
  rounding tie, so PIL's float32 result is round(sum / 13) = (2 sum + 13) // 26."""
  x = image.astype(jnp.int32)
  height, width = image.shape[:2]
  total = 4 * x[1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total = total + x[dy:dy + height - 2, dx:dx + width - 2]
  inner = ((2 * total + 13) // 26).astype(image.dtype)
  return image.at[1:-1, 1:-1].set(inner)


def sharpness(image, factor):
  """`ImageEnhance.Sharpness(img).enhance(factor)`: blend with `SMOOTH(img)`."""
  _check_image(image)
  return _blend(_smooth(image), image, factor)


def posterize(image, bits):
  """`ImageOps.posterize(img, bits)`: keep the top `bits` bits of each channel (bits in 1..8)."""
  _check_image(image)
  mask = (0xFF << (8 - jnp.asarray(bits, jnp.int32))) & 0xFF
  return (image.astype(jnp.int32) & mask).astype(jnp.uint8)


def solarize(image, threshold):
  """`ImageOps.solarize(img, threshold)`: values >= threshold become 255 - value."""
  _check_image(image)
  return jnp.where(image.astype(jnp.float32) < jnp.asarray(threshold, jnp.float32), image,
                   255 - image)


def invert(image):
  """`ImageOps.invert(img)`: 255 - value."""
  _check_image(image)
  return 255 - image


def _histograms(image):
  """i32[C, 256]: per-channel counts of the values of u8[H, W, C]."""
  channels = image.shape[-1]
  flat = image.reshape(-1, channels).astype(jnp.int32)
  return jax.vmap(lambda v: jnp.zeros(256, jnp.int32).at[v].add(1), in_axes=1)(flat)


def _apply_luts(image, luts):
  """u8[H, W, C] through one i32[C, 256] table per channel."""
  flat = image.reshape(-1, image.shape[-1]).astype(jnp.int32)
  mapped = jax.vmap(lambda lut, v: lut[v], in_axes=(0, 1), out_axes=1)(luts, flat)
  return mapped.reshape(image.shape).astype(jnp.uint8)


@functools.cache
def _autocontrast_low_codes() -> np.ndarray:
  """Sorted codes `(lo * 256 + hi) * 256 + v` of the pixels where PIL's autocontrast gives one
  level less than the exact stretch. PIL computes `int(v * scale + offset)` in float64 with
  `scale = 255 / (hi - lo)`, `offset = -lo * scale`; the result is within a few ulps of the exact
  quotient q = (v - lo) 255 / (hi - lo), so it truncates to floor(q) except where q is an integer
  and the float64 value lands just below it. Those cases (about 12,000 of the 190,950 integer
  ones) are found here by running PIL's arithmetic on every (lo, hi, v) with an integer q."""
  codes = []
  for span in range(1, 256):
    period = span // math.gcd(span, 255)  # q is an integer iff (v - lo) is a multiple of this
    lo = np.arange(256 - span)[:, None]
    v = lo + np.arange(0, span + 1, period)[None, :]
    scale = 255.0 / span
    value = v * scale + -lo * scale
    exact = (v - lo) * 255 // span
    low = value.astype(np.int64) < exact
    codes.append(((lo * 256 + lo + span) * 256 + v)[low])
  return np.sort(np.concatenate(codes)).astype(np.int32)


def autocontrast(image):
  """`ImageOps.autocontrast(img)` (cutoff 0): per channel, [lo, hi] = [min, max] stretched to
  [0, 255] by trunc((v - lo) 255 / (hi - lo)); a flat channel is left alone.

  The quotient is computed exactly in integers, then lowered by one level where PIL's float64
  arithmetic lands just below an integer (`_autocontrast_low_codes`), so the result is PIL's.
  """
  _check_image(image)
  flat = image.reshape(-1, image.shape[-1]).astype(jnp.int32)
  lo, hi = flat.min(axis=0), flat.max(axis=0)
  span = jnp.maximum(hi - lo, 1)
  stretched = ((flat - lo) * 255) // span
  low_codes = jnp.asarray(_autocontrast_low_codes())
  code = (lo * 256 + hi) * 256 + flat
  found = low_codes[jnp.minimum(jnp.searchsorted(low_codes, code), low_codes.size - 1)] == code
  out = jnp.where(hi > lo, stretched - found.astype(jnp.int32), flat)
  return out.reshape(image.shape).astype(jnp.uint8)


def _equalize_luts(hist):
  """PIL's `ImageOps.equalize` table for one channel's i32[256] histogram: with `step = (N -
  h[last]) // 255` (h[last]: the count of the largest value present), `lut[i] = (step // 2 +
  sum_{j<i} h[j]) // step`, clipped to 255; the identity if one value or step == 0."""
  values = jnp.arange(256)
  present = hist > 0
  last = jnp.max(jnp.where(present, values, -1))
  step = (jnp.sum(hist) - hist[jnp.maximum(last, 0)]) // 255
  safe = jnp.maximum(step, 1)
  before = jnp.cumsum(hist) - hist
  lut = jnp.minimum((step // 2 + before) // safe, 255)
  keep = (jnp.sum(present) <= 1) | (step == 0)
  return jnp.where(keep, values, lut)


def equalize(image):
  """`ImageOps.equalize(img)`: per-channel histogram equalisation with PIL's integer table."""
  _check_image(image)
  return _apply_luts(image, jax.vmap(_equalize_luts)(_histograms(image)))


# ---------------------------------------------------------------------------------------------
# The policy.


def _operation(name: str, level: int) -> Callable:
  """`fn(image, sign)` applying `name` at magnitude bin `level` as the official SubPolicy does."""
  if not 0 <= level < 10:
    raise ValueError(f"Magnitude bin must be in 0..9, got {level} for {name!r}.")
  m = float(MAGNITUDES[name][level])
  ops = {
      "shear_x": lambda x, s: shear_x(x, m, s),
      "shear_y": lambda x, s: shear_y(x, m, s),
      "translate_x": lambda x, s: translate_x(x, m, s),
      "translate_y": lambda x, s: translate_y(x, m, s),
      "rotate": lambda x, s: rotate(x, m),
      "color": lambda x, s: color(x, _enhance_factor(m, s)),
      "contrast": lambda x, s: contrast(x, _enhance_factor(m, s)),
      "sharpness": lambda x, s: sharpness(x, _enhance_factor(m, s)),
      "brightness": lambda x, s: brightness(x, _enhance_factor(m, s)),
      "posterize": lambda x, s: posterize(x, int(MAGNITUDES["posterize"][level])),
      "solarize": lambda x, s: solarize(x, m),
      "autocontrast": lambda x, s: autocontrast(x),
      "equalize": lambda x, s: equalize(x),
      "invert": lambda x, s: invert(x),
  }
  if name not in ops:
    raise ValueError(f"Unknown AutoAugment operation {name!r}; expected one of {sorted(ops)}.")
  return ops[name]


class _Slot(NamedTuple):
  """One position (first or second operation) of every sub-policy, as `lax.switch` branches:
  the distinct (op, magnitude) pairs in that position (parameterless ops merged), then identity."""
  branches: tuple
  branch_of: np.ndarray  # i32[num_subpolicies]: branch of each sub-policy's op
  probability: np.ndarray  # f32[num_subpolicies]


def _slot_key(name: str, level: int):
  return (name, 0) if name in ("autocontrast", "equalize", "invert") else (name, level)


@functools.cache
def _slots(policy: tuple) -> tuple[_Slot, ...]:
  slots = []
  for position in range(2):
    keys = []
    for subpolicy in policy:
      key = _slot_key(subpolicy[position][0], subpolicy[position][2])
      if key not in keys:
        keys.append(key)
    branches = tuple(_operation(*key) for key in keys) + ((lambda x, s: x),)
    branch_of = np.asarray([keys.index(_slot_key(sp[position][0], sp[position][2]))
                            for sp in policy], np.int32)
    probability = np.asarray([sp[position][1] for sp in policy], np.float32)
    slots.append(_Slot(branches, branch_of, probability))
  return tuple(slots)


def policy_params(key, batch: int, *, policy=CIFAR10_POLICY) -> dict:
  """The random draws of the policy for a batch: `subpolicy` i32[B] (uniform over the
  sub-policies), `uniform` f32[B, 2] (operation j runs iff uniform[:, j] < its probability, as
  `random.random() < p`), `sign` i32[B, 2] (+-1, the sign of a signed magnitude)."""
  key_pick, key_apply, key_sign = jax.random.split(key, 3)
  return {
      "subpolicy": jax.random.randint(key_pick, (batch,), 0, len(policy)),
      "uniform": jax.random.uniform(key_apply, (batch, 2)),
      "sign": jnp.where(jax.random.bernoulli(key_sign, 0.5, (batch, 2)), 1, -1).astype(jnp.int32),
  }


def policy_slots(policy=CIFAR10_POLICY) -> tuple:
  """The policy compiled into per-position `lax.switch` branches (cached; pass to
  `apply_subpolicy`)."""
  return _slots(tuple(policy))


def apply_subpolicy(image, draws: dict, slots=None):
  """One image's draws from `policy_params` (`subpolicy` i32[], `uniform` f32[2], `sign` i32[2])
  applied to u8[H, W, 3]: the drawn sub-policy's first operation if `uniform[0]` < its
  probability, then its second likewise. `slots` from `policy_slots` (default: CIFAR-10)."""
  _check_rgb(image)
  slots = policy_slots() if slots is None else slots
  subpolicy = draws["subpolicy"]
  for position, slot in enumerate(slots):
    runs = draws["uniform"][position] < jnp.asarray(slot.probability)[subpolicy]
    branch = jnp.where(runs, jnp.asarray(slot.branch_of)[subpolicy], len(slot.branches) - 1)
    image = jax.lax.switch(branch, slot.branches, image, draws["sign"][position])
  return image


def apply_policy(images, params, *, policy=CIFAR10_POLICY):
  """Applies draws from `policy_params` to u8[B, H, W, 3] images (u8 out); jittable."""
  if jnp.ndim(images) != 4 or images.shape[-1] != 3:
    raise ValueError(f"`images` must be RGB [batch, height, width, 3], got {jnp.shape(images)}.")
  if images.dtype != jnp.uint8:
    raise TypeError(f"AutoAugment works on uint8 images (as PIL does), got {images.dtype}.")
  slots = policy_slots(policy)
  return jax.vmap(lambda x, d: apply_subpolicy(x, d, slots))(images, params)


def cifar10_policy(key, images):
  """AutoAugment's CIFAR-10 policy on a batch: per image, one of the 25 sub-policies drawn
  uniformly, each of its two operations applied with its probability (official `CIFAR10Policy`).

  Args:
    key: PRNG key.
    images: u8[B, H, W, 3].

  Returns:
    u8[B, H, W, 3]; a deterministic function of (key, images).
  """
  return apply_policy(images, policy_params(key, images.shape[0]))
