"""AutoAugment's CIFAR-10 policy as pure JAX functions of a PRNG key, for a compiled train step.

AutoAugment (Cubuk et al., CVPR 2019, "AutoAugment: Learning Augmentation Strategies from Data")
found 25 sub-policies for CIFAR-10; each is two `(operation, probability, magnitude bin)` pairs.
Per image, one sub-policy is drawn uniformly; each of its two operations is applied with its
probability, in order. The GALA/BALMS CIFAR code (lt-project `data/autoaugment.py` @1eea15d,
DeepVoltaire's PyTorch port, `CIFAR10Policy`) runs it on PIL images after `RandomCrop(32, 4)`
and `RandomHorizontalFlip()` and before `ToTensor`, `Cutout(1, 16)` and `Normalize`; the
operations here reproduce that code's PIL calls on uint8 `[H, W, C]` RGB images:

* magnitudes: bin `k` of `linspace(lo, hi, 10)`; shear 0..0.3, translate 0..150/331 of the image
  side, rotate 0..30 degrees, colour/contrast/sharpness/brightness 0..0.9 (factor `1 +- m`),
  posterize `round(linspace(8, 4, 10))` bits, solarize threshold `linspace(256, 0, 10)`;
* a random sign on shear, translate and the four enhancement factors (not on rotate);
* fill colour (128, 128, 128) outside the source image for shear, translate and rotate;
* resampling as PIL does it: shear is `Image.transform(AFFINE, BICUBIC)` (PIL's cubic with
  a = -1, clamped borders, result truncated), translate is `AFFINE` with nearest sampling of
  pixel centres (an integer shift by `floor(offset + 1/2)`), rotate is `Image.rotate` (nearest,
  PIL's 16.16 fixed-point affine about the image centre);
* PIL's integer and float32 arithmetic for the pixel operations (luma, blends, SMOOTH, equalize
  and autocontrast tables), so every operation but shear gives PIL's bytes exactly; shear
  interpolates in float32 where PIL uses float64 and may differ by one level (measured on CIFAR
  images: at most 0.13% of the values). `tests/test_autoaugment.py` checks each against PIL.

API: the operations (`shear_x`, ..., `invert`; `operation(name, bin)` as the policy calls them),
`policy_params(key, B)` (the random draws), `apply_policy(images, params)`,
`cifar10_policy(key, images)`; `ltjax.data.augment(..., autoaugment=True)` runs the policy
between flip and Cutout. Geometric operations take their magnitudes as Python floats: their
sampling is computed once on the host in float64 with PIL's own arithmetic, so the compiled
step only slices and gathers. Each operation is one compiled branch serving all its magnitudes
(a traced index). Everything is deterministic in the key and runs inside `jit` without host
round trips: on CPU each image runs only its own two operations (`lax.map`), on accelerators the
batch is vmapped (every operation computed, the drawn one selected).
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

# The 25 CIFAR-10 sub-policies of the AutoAugment paper, in the official code's order:
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


def _sign_index(sign):
  """0 for a positive `sign`, 1 otherwise (the column of a [variants, 2] table)."""
  return (jnp.asarray(sign) <= 0).astype(jnp.int32)


def _pick(table: np.ndarray, variant, sign=None):
  """Row `variant` (and column `_sign_index(sign)`) of a host table, as a traced array."""
  picked = jnp.asarray(table)[jnp.asarray(variant, jnp.int32)]
  return picked if sign is None else picked[_sign_index(sign)]


def _enhance_factors(magnitudes: tuple) -> np.ndarray:
  """f32[V, 2]: `1 + m` and `1 - m` computed in float64 on the host, then rounded to float32 (PIL
  hands its factor to the C blend as a float)."""
  return np.asarray([[1.0 + m, 1.0 - m] for m in magnitudes], np.float32)


# ---------------------------------------------------------------------------------------------
# Geometry: sampling computed on the host with PIL's arithmetic (float64 / 16.16 fixed point).
# The ops take a tuple of magnitudes and a traced variant index into it, so one compiled branch
# serves every magnitude of an operation in the policy.


def _translate_source(offset: float, size: int) -> np.ndarray:
  """Source index of each output index for PIL's nearest `AFFINE` translation by `offset` (its
  scale path walks pixel centres: src = COORD(offset + 1/2 + i), accumulated in float64 one
  pixel at a time; COORD(v) = -1 for v < 0, else int(v))."""
  position, src = offset + 0.5, []
  for _ in range(size):
    src.append(-1 if position < 0 else int(position))
    position += 1.0
  return np.asarray(src, np.int64)


@functools.cache
def _translate_shifts(fractions: tuple, size: int) -> np.ndarray:
  """i32[V, 2]: the integer shift t (source = output + t, fill outside) of PIL's translation by
  `+-fraction * size` pixels; PIL's walk is checked to be exactly such a shift."""
  shifts = np.zeros((len(fractions), 2), np.int32)
  for v, fraction in enumerate(fractions):
    for column, sign in enumerate((1.0, -1.0)):
      src = _translate_source(sign * fraction * size, size)
      shift = int(np.floor(sign * fraction * size + 0.5))
      expected = np.arange(size) + shift
      inside = (expected >= 0) & (expected < size)
      if not np.array_equal(src[inside], expected[inside]) or np.any(
          (src[~inside] >= 0) & (src[~inside] < size)):
        raise AssertionError(f"PIL's translation by {fraction} is not an integer shift.")
      shifts[v, column] = shift
  return shifts


def _translate(image, fractions: tuple, variant, sign, axis: int):
  """Output index i shows source index i + t along `axis` (fill outside): a slice of the image
  padded with the fill colour."""
  _check_image(image)
  size = image.shape[axis]
  shift = _pick(_translate_shifts(tuple(float(f) for f in fractions), size), variant, sign)
  pad = [(0, 0)] * 3
  pad[axis] = (size, size)
  padded = jnp.pad(image, pad, constant_values=FILL)
  return jax.lax.dynamic_slice_in_dim(padded, size + shift, size, axis=axis)


def translate_x(image, magnitude: float, sign=1):
  """`img.transform(size, AFFINE, (1, 0, sign * magnitude * W, 0, 1, 0), fillcolor=128)` (nearest):
  output column x shows source column x + floor(offset + 1/2), fill outside.

  Args:
    image: u8[H, W, C].
    magnitude: offset as a fraction of the width (Python float; 0..150/331 in the policy).
    sign: +1 or -1 (may be traced).

  Returns:
    u8[H, W, C].
  """
  return _translate(image, (magnitude,), 0, sign, axis=1)


def translate_y(image, magnitude: float, sign=1):
  """As `translate_x` along rows, with the offset `sign * magnitude * H`. u8[H, W, C] -> same."""
  return _translate(image, (magnitude,), 0, sign, axis=0)


@functools.cache
def _shear_rows(shears: tuple, height: int, width: int):
  """PIL's bicubic `AFFINE` sampling for the shear `(1, s, 0, 0, 1, 0)`, s = +-shear: output
  pixel centre (x + 1/2, y + 1/2) samples source x_src = (x + 1/2) + s (y + 1/2) on row y (the
  source y is the row's own centre, so PIL's vertical cubic has weight 1 on that row). PIL takes
  4 taps from floor(x_src - 1/2) - 1, clamped to the row, at fraction x_src - 1/2 - floor, and
  fills where x_src is outside [0, W). On each row the taps start at x + a constant.

  Returns:
    start i32[V, 2, H] (first tap minus x), fraction f32[V, 2, H, W], inside bool[V, 2, H, W].
  """
  start = np.zeros((len(shears), 2, height), np.int32)
  fraction = np.zeros((len(shears), 2, height, width), np.float32)
  inside = np.zeros((len(shears), 2, height, width), bool)
  yc, xc = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
  for v, shear in enumerate(shears):
    for column, sign in enumerate((1.0, -1.0)):
      x_src = 1.0 * xc + sign * shear * yc + 0.0
      base = np.floor(x_src - 0.5).astype(np.int64)
      offset = base - np.arange(width)
      if not np.all(offset == offset[:, :1]):
        raise AssertionError(f"PIL's shear by {shear} does not shift rows uniformly.")
      start[v, column] = offset[:, 0] - 1
      fraction[v, column] = (x_src - 0.5) - base
      inside[v, column] = (x_src >= 0) & (x_src < width)
  return start, fraction, inside


def _pil_cubic(v1, v2, v3, v4, d):
  """PIL's cubic through four samples at fraction d (convolution kernel with a = -1), written in
  its Horner form so flat regions stay exact."""
  p2 = v3 - v1
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def _shear(image, shears: tuple, variant, sign, axis: int):
  _check_image(image)
  if axis == 0:  # shear_y is shear_x of the transposed image (PIL's sums commute exactly)
    return jnp.swapaxes(_shear(jnp.swapaxes(image, 0, 1), shears, variant, sign, 1), 0, 1)
  height, width, _ = image.shape
  tables = _shear_rows(tuple(float(m) for m in shears), height, width)
  start, fraction, inside = (_pick(t, variant, sign) for t in tables)
  # Edge padding reproduces PIL's clamped taps; each row is one window of W + 3 values.
  pad = width + 4
  padded = jnp.pad(image, ((0, 0), (pad, pad), (0, 0)), mode="edge").astype(jnp.float32)
  windows = jax.vmap(lambda row, s: jax.lax.dynamic_slice_in_dim(row, s, width + 3))(
      padded, start + pad)
  v1, v2, v3, v4 = (windows[:, k:k + width] for k in range(4))
  value = _pil_cubic(v1, v2, v3, v4, fraction[..., None])
  return jnp.where(inside[..., None], _as_u8(value), jnp.asarray(FILL, jnp.uint8))


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
  return _shear(image, (magnitude,), 0, sign, axis=1)


def shear_y(image, magnitude: float, sign=1):
  """`img.transform(size, AFFINE, (1, 0, 0, sign * magnitude, 1, 0), BICUBIC, fillcolor=128)`:
  the source y of output pixel centre (x, y) is y + sign * magnitude * x. u8[H, W, C] -> same."""
  return _shear(image, (magnitude,), 0, sign, axis=0)


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
def _rotate_maps(angles: tuple, height: int, width: int):
  """Source rows, cols i32[V, H, W] and inside bool[V, H, W] of PIL's nearest affine transform,
  in its 16.16 fixed point: x_src = (FIX(c + a/2 + b/2) + y FIX(b) + x FIX(a)) >> 16, likewise
  for y_src, with FIX(v) = floor(v 65536 + 1/2)."""

  def fix(v):
    return math.floor(v * 65536.0 + 0.5)

  ys, xs = np.meshgrid(np.arange(height, dtype=np.int64), np.arange(width, dtype=np.int64),
                       indexing="ij")
  maps = []
  for degrees in angles:
    a, b, c, d, e, f = _pil_rotation_matrix(degrees, width, height)
    a0, a1, a3, a4 = fix(a), fix(b), fix(d), fix(e)
    a2, a5 = fix(c + a * 0.5 + b * 0.5), fix(f + d * 0.5 + e * 0.5)
    cols = (a2 + ys * a1 + xs * a0) >> 16
    rows = (a5 + ys * a4 + xs * a3) >> 16
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    maps.append((rows.clip(0, height - 1), cols.clip(0, width - 1), inside))
  rows, cols, inside = (np.stack(m) for m in zip(*maps))
  return rows.astype(np.int32), cols.astype(np.int32), inside


def _rotate(image, angles: tuple, variant):
  _check_image(image)
  rows, cols, inside = (_pick(t, variant) for t in
                        _rotate_maps(tuple(float(a) for a in angles), *image.shape[:2]))
  return jnp.where(inside[..., None], image[rows, cols], jnp.asarray(FILL, image.dtype))


def rotate(image, degrees: float):
  """The official `rotate_with_fill`: `img.convert("RGBA").rotate(degrees)` (nearest,
  counter-clockwise about the centre, no expand) composited over grey 128, back to RGB.

  Args:
    image: u8[H, W, C].
    degrees: angle (Python float; 0..30 in the policy, never negated there).

  Returns:
    u8[H, W, C].
  """
  return _rotate(image, (degrees,), 0)


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
  channels = image.shape[-1]
  flat = image.reshape(-1, channels).astype(jnp.int32)
  lo, hi = flat.min(axis=0)[:, None], flat.max(axis=0)[:, None]  # [C, 1]
  values = jnp.arange(256)[None, :]
  stretched = ((values - lo) * 255) // jnp.maximum(hi - lo, 1)  # [C, 256] tables
  low_codes = jnp.asarray(_autocontrast_low_codes())
  code = (lo * 256 + hi) * 256 + values
  found = low_codes[jnp.minimum(jnp.searchsorted(low_codes, code), low_codes.size - 1)] == code
  luts = jnp.where(hi > lo, jnp.clip(stretched - found.astype(jnp.int32), 0, 255), values)
  return _apply_luts(image, luts)


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


def _kind(name: str, levels: tuple) -> Callable:
  """`fn(image, variant, sign)`: operation `name` at magnitude bin `levels[variant]` as the
  official SubPolicy applies it (`sign` +-1 on the signed magnitudes; `variant`, `sign` traced)."""
  if any(not 0 <= level < 10 for level in levels):
    raise ValueError(f"Magnitude bins must be in 0..9, got {levels} for {name!r}.")
  if name not in MAGNITUDES:
    raise ValueError(f"Unknown AutoAugment operation {name!r}; expected one of "
                     f"{sorted(MAGNITUDES)}.")
  m = tuple(float(MAGNITUDES[name][level]) for level in levels)
  if name in ("shear_x", "shear_y"):
    axis = 1 if name == "shear_x" else 0
    return lambda x, v, s: _shear(x, m, v, s, axis)
  if name in ("translate_x", "translate_y"):
    axis = 1 if name == "translate_x" else 0
    return lambda x, v, s: _translate(x, m, v, s, axis)
  if name == "rotate":
    return lambda x, v, s: _rotate(x, m, v)
  if name in ("color", "contrast", "sharpness", "brightness"):
    enhance = {"color": color, "contrast": contrast, "sharpness": sharpness,
               "brightness": brightness}[name]
    factors = _enhance_factors(m)
    return lambda x, v, s: enhance(x, _pick(factors, v, s))
  if name == "posterize":
    bits = np.asarray([int(MAGNITUDES[name][level]) for level in levels], np.int32)
    return lambda x, v, s: posterize(x, _pick(bits, v))
  if name == "solarize":
    thresholds = np.asarray(m, np.float32)
    return lambda x, v, s: solarize(x, _pick(thresholds, v))
  unary = {"autocontrast": autocontrast, "equalize": equalize, "invert": invert}[name]
  return lambda x, v, s: unary(x)


def operation(name: str, level: int) -> Callable:
  """`fn(image, sign)`: operation `name` at magnitude bin `level` (0..9) of the official
  `SubPolicy`, e.g. `operation("translate_y", 9)(image, -1)`. u8[H, W, 3] -> same."""
  fn = _kind(name, (level,))
  return lambda image, sign=1: fn(image, 0, sign)


class _Program(NamedTuple):
  """A policy as `lax.switch` branches: one per operation it uses (each serving all its
  magnitudes), then the identity; and per (sub-policy, position) the branch, the magnitude's
  index within it and the probability. Both positions share the branches, so a scan over the two
  positions compiles each operation once."""
  branches: tuple
  branch_of: np.ndarray  # i32[num_subpolicies, 2]
  variant_of: np.ndarray  # i32[num_subpolicies, 2]
  probability: np.ndarray  # f32[num_subpolicies, 2]


def _bin_key(name: str, level: int) -> int:
  return 0 if name in ("autocontrast", "equalize", "invert") else level  # no magnitude


@functools.cache
def _program(policy: tuple) -> _Program:
  levels = {}  # operation -> its distinct magnitude bins, in order of appearance
  for subpolicy in policy:
    for name, _, level in subpolicy:
      levels.setdefault(name, [])
      if _bin_key(name, level) not in levels[name]:
        levels[name].append(_bin_key(name, level))
  names = list(levels)
  branches = tuple(_kind(name, tuple(levels[name])) for name in names)
  branch_of = [[names.index(name) for name, _, _ in sp] for sp in policy]
  variant_of = [[levels[name].index(_bin_key(name, level)) for name, _, level in sp]
                for sp in policy]
  probability = [[p for _, p, _ in sp] for sp in policy]
  return _Program(branches + ((lambda x, v, s: x),), np.asarray(branch_of, np.int32),
                  np.asarray(variant_of, np.int32), np.asarray(probability, np.float32))


def policy_params(key, batch: int, *, policy=CIFAR10_POLICY) -> dict:
  """The random draws of the policy for a batch, all from one `uniform(key, [B, 5])` (one
  generator call compiles several times faster than three):

  * `subpolicy` i32[B]: floor(25 u0), uniform over the sub-policies (`random.randint`);
  * `uniform` f32[B, 2]: operation j runs iff uniform[:, j] < its probability (`random.random()`);
  * `sign` i32[B, 2]: +1 if u < 1/2 else -1, the sign of a signed magnitude (`random.choice`).
  """
  u = jax.random.uniform(key, (batch, 5))
  count = len(policy)
  return {
      "subpolicy": jnp.minimum(jnp.floor(u[:, 0] * count), count - 1).astype(jnp.int32),
      "uniform": u[:, 1:3],
      "sign": jnp.where(u[:, 3:] < 0.5, 1, -1).astype(jnp.int32),
  }


def policy_program(policy=CIFAR10_POLICY) -> _Program:
  """The policy prepared for `apply_subpolicy` (cached per policy)."""
  if any(len(sp) != 2 for sp in policy):
    raise ValueError("Each sub-policy must be two (operation, probability, bin) triples.")
  return _program(tuple(tuple(tuple(op) for op in sp) for sp in policy))


def apply_subpolicy(image, draws: dict, program=None):
  """One image's draws from `policy_params` (`subpolicy` i32[], `uniform` f32[2], `sign` i32[2])
  applied to u8[H, W, 3]: the drawn sub-policy's first operation if `uniform[0]` < its
  probability, then its second likewise. `program` from `policy_program` (default: CIFAR-10)."""
  _check_rgb(image)
  program = policy_program() if program is None else program
  subpolicy = draws["subpolicy"]
  identity = len(program.branches) - 1

  def position(image, inputs):
    uniform, sign, branch, variant, probability = inputs
    chosen = jnp.where(uniform < probability, branch, identity)
    return jax.lax.switch(chosen, program.branches, image, variant, sign), None

  per_position = (draws["uniform"], draws["sign"], jnp.asarray(program.branch_of)[subpolicy],
                  jnp.asarray(program.variant_of)[subpolicy],
                  jnp.asarray(program.probability)[subpolicy])
  return jax.lax.scan(position, image, per_position)[0]


def apply_policy(images, params, *, policy=CIFAR10_POLICY, per_image: bool | None = None):
  """Applies draws from `policy_params` to u8[B, H, W, 3] images (u8 out); jittable.

  `per_image=True` loops over the images (`lax.map`), so each image runs only its own two
  operations; `False` vmaps, which turns the branch choice into a select over every operation's
  result. The results are identical. Default: loop on CPU (about 10x faster there), vmap on
  accelerators (where a loop would decide each branch on the host).
  """
  if jnp.ndim(images) != 4 or images.shape[-1] != 3:
    raise ValueError(f"`images` must be RGB [batch, height, width, 3], got {jnp.shape(images)}.")
  if images.dtype != jnp.uint8:
    raise TypeError(f"AutoAugment works on uint8 images (as PIL does), got {images.dtype}.")
  program = policy_program(policy)
  if per_image is None:
    per_image = jax.default_backend() == "cpu"
  if per_image:
    return jax.lax.map(lambda args: apply_subpolicy(args[0], args[1], program), (images, params))
  return jax.vmap(lambda x, d: apply_subpolicy(x, d, program))(images, params)


def cifar10_policy(key, images, *, per_image: bool | None = None):
  """AutoAugment's CIFAR-10 policy on a batch: per image, one of the 25 sub-policies drawn
  uniformly, each of its two operations applied with its probability (official `CIFAR10Policy`).

  Args:
    key: PRNG key.
    images: u8[B, H, W, 3].
    per_image: see `apply_policy`.

  Returns:
    u8[B, H, W, 3]; a deterministic function of (key, images).
  """
  return apply_policy(images, policy_params(key, images.shape[0]), per_image=per_image)
