"""Host JPEG decoding: RandomResizedCrop's box law, the eval resize + centre crop against a plain
PIL reference, and the reduced-scale (draft) decode against the full decode."""
import io

import numpy as np
import pytest
from PIL import Image
from PIL import ImageEnhance

from ltjax import data
from ltjax.data import _decode


def _jpeg(width=400, height=350, quality=90, mode="RGB", seed=0):
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:height, 0:width]
  smooth = np.stack([np.sin(x / 23.0 + c) * np.cos(y / 17.0 - c) for c in range(3)], -1)
  pixels = np.clip(127 + 100 * smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)
  image = Image.fromarray(pixels)
  if mode != "RGB":
    image = image.convert(mode)
  buf = io.BytesIO()
  image.save(buf, format="JPEG", quality=quality)
  return buf.getvalue(), pixels


def test_random_resized_crop_boxes_follow_torchvision_law():
  rng = np.random.default_rng(0)
  boxes = np.array([_decode.random_resized_crop_box(400, 350, rng) for _ in range(2000)])
  left, top, w, h = boxes.T
  assert np.all((left >= 0) & (top >= 0) & (left + w <= 400) & (top + h <= 350))
  fraction = w * h / (400 * 350)
  assert fraction.min() >= 0.07 and fraction.max() <= 1.0
  aspect = w / h
  assert aspect.min() > 0.7 and aspect.max() < 1.4
  # The area fraction is uniform on [0.08, 1] among accepted boxes (large ones get rejected more
  # often, so the mean sits a little below 0.54).
  assert 0.40 < fraction.mean() < 0.56
  # Impossible constraints fall back to the ratio-clamped central crop.
  assert _decode.random_resized_crop_box(1000, 100, rng, scale=(1.0, 1.0)) == (433, 0, 133, 100)


def test_center_crop_matches_resize_then_crop_reference():
  raw, _ = _jpeg()
  out = data.decode_center_crop(raw, size=224, fast=False)
  image = Image.open(io.BytesIO(raw)).convert("RGB")
  scale = 256 / 350
  resized = image.resize((round(400 * scale), 256), Image.BILINEAR)
  left, top = (resized.size[0] - 224) // 2, (256 - 224) // 2
  reference = np.asarray(resized.crop((left, top, left + 224, top + 224)))
  assert out.shape == (224, 224, 3) and out.dtype == np.uint8
  assert np.abs(out.astype(int) - reference).mean() < 3.0


def test_fast_decode_agrees_with_full_decode():
  raw, _ = _jpeg(800, 700, seed=1)  # large enough for a 1/2-scale draft at 224
  full = data.decode_center_crop(raw, size=224, fast=False).astype(int)
  fast = data.decode_center_crop(raw, size=224, fast=True).astype(int)
  assert np.abs(full - fast).mean() < 4.0
  a = data.decode_random_resized_crop(raw, np.random.default_rng(5), size=64, fast=False)
  b = data.decode_random_resized_crop(raw, np.random.default_rng(5), size=64, fast=True)
  assert np.abs(a.astype(int) - b).mean() < 6.0


def test_random_resized_crop_is_deterministic_per_seed_and_flips():
  raw, _ = _jpeg(seed=2)
  outs = [data.decode_random_resized_crop(raw, np.random.default_rng(s), size=32) for s in (7, 7)]
  np.testing.assert_array_equal(*outs)
  flipped = 0
  for seed in range(20):
    with_flip = data.decode_random_resized_crop(raw, np.random.default_rng(seed), size=32)
    no_flip = data.decode_random_resized_crop(raw, np.random.default_rng(seed), size=32,
                                              flip=False)
    if not np.array_equal(with_flip, no_flip):
      np.testing.assert_array_equal(with_flip, no_flip[:, ::-1])
      flipped += 1
  assert 3 <= flipped <= 17


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_non_rgb_jpegs_decode_to_rgb(mode):
  raw, _ = _jpeg(120, 90, mode=mode)
  assert data.decode_center_crop(raw, size=64).shape == (64, 64, 3)
  assert data.decode_random_resized_crop(raw, np.random.default_rng(0), size=48).shape == (
      48, 48, 3)


def test_resize_below_size_is_rejected():
  raw, _ = _jpeg(64, 64)
  with pytest.raises(ValueError, match="resize"):
    data.decode_center_crop(raw, size=64, resize=32)


def _photo(seed, shape=(37, 53, 3)):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)


# torchvision's ColorJitter on a PIL image runs these PIL enhancers (F_pil.adjust_*).
_PIL_ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)


@pytest.mark.parametrize("op", range(3))
@pytest.mark.parametrize("factor", [0.0, 0.6, 0.93, 1.0, 1.37, 1.4])
def test_colour_adjustments_equal_pils_enhancers_bit_for_bit(op, factor):
  image = _photo(op)
  ours = _decode._JITTER_OPS[op](image, factor)
  theirs = np.asarray(_PIL_ENHANCERS[op](Image.fromarray(image)).enhance(factor))
  np.testing.assert_array_equal(ours, theirs)


def test_colour_adjustments_closed_forms():
  image = _photo(7)
  grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  # Brightness 0 is black; saturation 0 the greyscale image; contrast 0 the mean grey level.
  np.testing.assert_array_equal(_decode.adjust_brightness(image, 0.0), 0)
  saturation0 = _decode.adjust_saturation(image, 0.0).astype(np.float64)
  np.testing.assert_allclose(saturation0, np.repeat(grey[..., None], 3, -1), atol=1.0)
  np.testing.assert_array_equal(_decode.adjust_contrast(image, 0.0), int(grey.mean() + 0.5))
  # Factor 1 is the identity; brightness 1.2 is 1.2 x, clipped and truncated.
  for op in _decode._JITTER_OPS:
    np.testing.assert_array_equal(op(image, 1.0), image)
  np.testing.assert_array_equal(_decode.adjust_brightness(image, 1.2),
                                np.minimum(image * np.float32(1.2), 255).astype(np.uint8))


def test_colour_jitter_is_pils_chain_in_a_random_order_with_factors_in_range():
  image, strengths = _photo(3), {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4}
  orders = set()
  for seed in range(40):
    params = _decode.color_jitter_params(np.random.default_rng(seed), **strengths)
    assert sorted(op for op, _ in params) == [0, 1, 2]
    assert all(0.6 <= f <= 1.4 for _, f in params)
    orders.add(tuple(op for op, _ in params))
    expected = Image.fromarray(image)
    for op, factor in params:
      expected = _PIL_ENHANCERS[op](expected).enhance(factor)
    np.testing.assert_array_equal(
        data.color_jitter(image, np.random.default_rng(seed), **strengths), np.asarray(expected))
  assert len(orders) == 6  # every order of the three adjustments occurs
  # A zero strength skips its adjustment (torchvision's None); all zeros change nothing.
  params = _decode.color_jitter_params(np.random.default_rng(0), brightness=0.4)
  assert [op for op, _ in params] == [0]
  np.testing.assert_array_equal(data.color_jitter(image, np.random.default_rng(0)), image)
  with pytest.raises(ValueError, match="strengths"):
    data.color_jitter(image, np.random.default_rng(0), contrast=-0.1)
