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
