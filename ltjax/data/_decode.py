"""Host-side JPEG decoding with the ImageNet augmentations, for the streaming pipeline's workers.

Training: torchvision's `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` +
`RandomHorizontalFlip()`. Evaluation: `Resize(size * 256 / 224)` (shorter side) +
`CenterCrop(size)`. Both return u8[size, size, 3] (RGB); normalisation happens on the device.

Speed: the crop box is chosen from the JPEG header alone, then PIL's `draft` lets libjpeg decode
at 1/2, 1/4 or 1/8 scale in the DCT domain whenever the crop still has at least `size` pixels at
that scale, and one bilinear (antialiased) `resize(box=...)` crops and scales in a single pass.
With `fast=False` the image is decoded at full size first; the two agree to within the difference
between libjpeg's DCT downscaling and a bilinear resize (a few grey levels on average).
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np
from PIL import Image

DEFAULT_SCALE = (0.08, 1.0)
DEFAULT_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, *,
                            scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO) -> tuple[int, int, int, int]:
  """torchvision's `RandomResizedCrop.get_params`: `(left, top, w, h)` of the crop.

  Up to 10 tries draw an area fraction uniformly from `scale` and an aspect ratio log-uniformly
  from `ratio`, keeping the first box that fits; otherwise the whole image's central crop with the
  aspect ratio clamped to `ratio`.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = round(math.sqrt(target * aspect))
    h = round(math.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return left, top, w, h
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, round(width / ratio[0])
  elif in_ratio > ratio[1]:
    w, h = round(height * ratio[1]), height
  else:
    w, h = width, height
  return (width - w) // 2, (height - h) // 2, w, h


def center_crop_box(width: int, height: int, *, size: int, resize: int
                    ) -> tuple[float, float, float, float]:
  """`(left, top, w, h)` in original pixels of `CenterCrop(size)` after `Resize(resize)`."""
  factor = resize / min(width, height)
  w, h = min(size / factor, width), min(size / factor, height)
  return (width - w) / 2.0, (height - h) / 2.0, w, h


def _crop_resize(data: bytes, box_fn, size: int, fast: bool) -> np.ndarray:
  image = Image.open(io.BytesIO(data))
  width, height = image.size
  left, top, w, h = box_fn(width, height)
  if fast and image.format == "JPEG":
    # Decode at the smallest DCT scale that still leaves >= size pixels across the crop.
    image.draft("RGB", (math.ceil(width * size / w), math.ceil(height * size / h)))
  sx, sy = image.size[0] / width, image.size[1] / height
  image = image.convert("RGB")
  box = (left * sx, top * sy, (left + w) * sx, (top + h) * sy)
  return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, box=box), np.uint8)


def decode_random_resized_crop(data: bytes, rng: np.random.Generator, *, size: int = 224,
                               flip: bool = True, scale=DEFAULT_SCALE, ratio=DEFAULT_RATIO,
                               fast: bool = True) -> np.ndarray:
  """Decodes encoded image bytes with RandomResizedCrop(size) (+ a random horizontal flip).

  Args:
    data: the encoded image (JPEG, or anything PIL reads; CMYK / grey become RGB).
    rng: the NumPy generator of this example (seeded per example for determinism).
    size: output side.
    flip: flip horizontally with probability 1/2.
    scale, ratio: RandomResizedCrop's ranges.
    fast: decode JPEGs at reduced DCT scale when the crop allows (see module doc).

  Returns:
    u8[size, size, 3].
  """
  box_fn = functools.partial(random_resized_crop_box, rng=rng, scale=scale, ratio=ratio)
  out = _crop_resize(data, box_fn, size, fast)
  if flip and rng.random() < 0.5:
    out = out[:, ::-1]
  return np.ascontiguousarray(out)


def decode_center_crop(data: bytes, *, size: int = 224, resize: int | None = None,
                       fast: bool = True) -> np.ndarray:
  """Decodes encoded image bytes with Resize(resize) (shorter side) + CenterCrop(size).

  `resize` defaults to `round(size * 256 / 224)` (256 for 224, the ImageNet protocol).
  Returns u8[size, size, 3].
  """
  resize = round(size * 256 / 224) if resize is None else int(resize)
  if resize < size:
    raise ValueError(f"`resize`={resize} must be >= `size`={size}.")
  box_fn = functools.partial(center_crop_box, size=size, resize=resize)
  return _crop_resize(data, box_fn, size, fast)


def _grey(image: np.ndarray) -> np.ndarray:
  """PIL's `convert("L")` of u8[..., 3] RGB: `(19595 R + 38470 G + 7471 B + 2^15) >> 16`, the
  ITU-R 601 weights 0.299 / 0.587 / 0.114 in 16-bit fixed point, rounded."""
  rgb = image.astype(np.int32)
  return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
          ).astype(np.uint8)


def _blend(degenerate, image: np.ndarray, factor: float) -> np.ndarray:
  """PIL's `Image.blend(degenerate, image, factor)`: `d + factor * (x - d)` in float32, clipped to
  [0, 255] and truncated, as `ImageEnhance` computes it (factor 0 gives `degenerate`, 1 `image`)."""
  d = np.asarray(degenerate, np.float32)
  out = d + np.float32(factor) * (image.astype(np.float32) - d)
  return np.clip(out, 0.0, 255.0).astype(np.uint8)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
  """torchvision's `adjust_brightness` on a PIL image: blend with black, `factor * x`."""
  return _blend(0.0, image, factor)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
  """torchvision's `adjust_contrast` on a PIL image: blend with the grey level
  `int(mean(L) + 0.5)`, L the image's luminance (`_grey`)."""
  mean = int(_grey(image).mean(dtype=np.float64) + 0.5)
  return _blend(float(mean), image, factor)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
  """torchvision's `adjust_saturation` on a PIL image: blend with the greyscale image."""
  return _blend(_grey(image)[..., None], image, factor)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation)


def color_jitter_params(rng: np.random.Generator, *, brightness: float = 0.0,
                        contrast: float = 0.0, saturation: float = 0.0):
  """The random part of torchvision's `ColorJitter(brightness, contrast, saturation, hue=0)`:
  a uniformly random order of the three adjustments and, for each strength `s > 0`, a factor
  drawn uniformly from `[max(0, 1 - s), 1 + s]` (strength 0: the adjustment is skipped).

  Returns:
    `[(op index, factor), ...]` in the order to apply them (0 brightness, 1 contrast,
    2 saturation).
  """
  strengths = (brightness, contrast, saturation)
  if any(not np.isfinite(s) or s < 0 for s in strengths):
    raise ValueError(f"Colour jitter strengths must be finite and >= 0, got {strengths}.")
  order = rng.permutation(3)
  factors = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) if s > 0 else None for s in strengths]
  return [(int(i), float(factors[i])) for i in order if factors[i] is not None]


def color_jitter(image: np.ndarray, rng: np.random.Generator, *, brightness: float = 0.0,
                 contrast: float = 0.0, saturation: float = 0.0) -> np.ndarray:
  """torchvision's `ColorJitter(brightness, contrast, saturation, hue=0)` on u8[H, W, 3] RGB, as it
  acts on a PIL image (`ImageEnhance` arithmetic: blends with black, with the mean luminance and
  with the greyscale image; luminance 0.299 R + 0.587 G + 0.114 B), in a random order.

  The decoupling code (classifier-balancing `data/dataloader.py`) trains ImageNet-LT and
  Places-LT with `ColorJitter(0.4, 0.4, 0.4, 0)` after RandomResizedCrop + flip; iNaturalist
  without it.
  """
  for op, factor in color_jitter_params(rng, brightness=brightness, contrast=contrast,
                                        saturation=saturation):
    image = _JITTER_OPS[op](image, factor)
  return image
