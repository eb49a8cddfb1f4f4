"""Image augmentations as pure JAX functions of a PRNG key, for use inside a compiled step.

They follow torchvision's CIFAR transforms, per image: `RandomCrop(32, padding=4)` (zero padding,
offsets uniform in [0, 2 * padding]), `RandomHorizontalFlip()` (p = 0.5) and Cutout (DeVries &
Taylor 2017, one square hole of side `size` whose centre is uniform over the image, clipped at the
borders, filled with 0), then `Normalize(mean, std)` on `x / 255`. Optionally AutoAugment's
CIFAR-10 policy runs between flip and Cutout, as in the GALA/BALMS transform list (see
`ltjax.data._autoaugment`). Images are `[B, H, W, C]`; crop, flip, the policy and cutout keep the
dtype, so uint8 batches stay uint8 until `normalize`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ltjax.data import _autoaugment

# torchvision-style per-channel constants used by the CIFAR code of LDAM-DRW, GALA/BALMS and LOS.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _check_images(images) -> None:
  if jnp.ndim(images) != 4:
    raise ValueError(f"`images` must be [batch, height, width, channels], got shape "
                     f"{jnp.shape(images)}.")


def _check_policy_input(images) -> None:
  if images.dtype != jnp.uint8 or images.shape[-1] != 3:
    raise ValueError("AutoAugment needs uint8 RGB images [B, H, W, 3], got "
                     f"{images.dtype}{list(images.shape)}.")


def _crop_offsets(key, batch: int, padding: int):
  return jax.random.randint(key, (batch, 2), 0, 2 * padding + 1)


def _flips(key, batch: int):
  return jax.random.bernoulli(key, 0.5, (batch,))


def _hole_centres(key, batch: int, height: int, width: int):
  key_y, key_x = jax.random.split(key)
  return jnp.stack([jax.random.randint(key_y, (batch,), 0, height),
                    jax.random.randint(key_x, (batch,), 0, width)], axis=-1)


def _apply_crop(image, offset, padding: int):
  height, width, channels = image.shape
  padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
  return jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (height, width, channels))


def _apply_flip(image, flip):
  return jnp.where(flip, image[:, ::-1], image)


def _apply_cutout(image, centre, size: int):
  height, width, _ = image.shape
  rows = jnp.arange(height)[:, None, None]
  cols = jnp.arange(width)[None, :, None]
  hole = ((rows >= centre[0] - size // 2) & (rows < centre[0] + size // 2)
          & (cols >= centre[1] - size // 2) & (cols < centre[1] + size // 2))
  return jnp.where(hole, jnp.zeros((), image.dtype), image)


def random_crop(key, images, *, padding: int = 4):
  """Zero-pads each image by `padding` pixels per side and crops back at a uniform offset.

  Args:
    key: PRNG key.
    images: [B, H, W, C] any dtype.
    padding: pixels of zero padding per side (>= 0).

  Returns:
    [B, H, W, C], same dtype.
  """
  _check_images(images)
  if padding < 0:
    raise ValueError(f"`padding` must be >= 0, got {padding}.")
  if padding == 0:
    return images
  offsets = _crop_offsets(key, images.shape[0], padding)
  return jax.vmap(lambda x, o: _apply_crop(x, o, padding))(images, offsets)


def random_flip(key, images):
  """Mirrors each image left-right with probability 1/2. [B, H, W, C] -> same."""
  _check_images(images)
  return jax.vmap(_apply_flip)(images, _flips(key, images.shape[0]))


def cutout(key, images, *, size: int = 16):
  """Zeroes one `size` x `size` square per image, centre uniform over the image, clipped at the
  borders (so edge holes are smaller), as in DeVries & Taylor's `Cutout(n_holes=1, length)`."""
  _check_images(images)
  if size <= 0:
    return images
  centres = _hole_centres(key, *images.shape[:3])
  return jax.vmap(lambda x, c: _apply_cutout(x, c, size))(images, centres)


def normalize(images, *, mean, std):
  """`(images / 255 - mean) / std` per channel, in float32. uint8 [B, H, W, C] -> f32.

  Under `jax_enable_x64` it computes in float64 (-> f64), so that float64 parity tests do not
  depend on how XLA fuses the float32 arithmetic (one float32 ulp between fusions)."""
  dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
  mean = jnp.asarray(mean, dtype)
  std = jnp.asarray(std, dtype)
  return (images.astype(dtype) / 255.0 - mean) / std


def augment_params(key, batch: int, height: int, width: int, *, crop_padding: int = 4,
                   autoaugment: bool = False):
  """The random draws of `augment` for a batch: crop offsets i32[B, 2], flips bool[B], Cutout
  centres i32[B, 2], and with `autoaugment` the policy's draws (`policy_params`, under "policy",
  from `fold_in(key, 3)` so the other draws do not change). Drawing them for the global batch
  keeps results independent of how the batch is later split over devices."""
  key_crop, key_flip, key_cut = jax.random.split(key, 3)
  params: dict[str, Any] = {"offset": _crop_offsets(key_crop, batch, crop_padding),
                            "flip": _flips(key_flip, batch),
                            "centre": _hole_centres(key_cut, batch, height, width)}
  if autoaugment:
    params["policy"] = _autoaugment.policy_params(jax.random.fold_in(key, 3), batch)
  return params


def apply_augment(images, params, *, crop_padding: int = 4, flip: bool = True,
                  cutout_size: int = 0, autoaugment: bool = False):
  """Applies draws from `augment_params` to [B, H, W, C] images (same dtype out); with
  `autoaugment` the images must be uint8 RGB and `params` must hold "policy"."""
  if autoaugment:
    _check_policy_input(images)
    if "policy" not in params:
      raise ValueError("`params` has no AutoAugment draws: pass `autoaugment=True` to "
                       "`augment_params` too.")

  def geometric(image, draws):
    if crop_padding:
      image = _apply_crop(image, draws["offset"], crop_padding)
    if flip:
      image = _apply_flip(image, draws["flip"])
    return image

  images = jax.vmap(geometric)(images, params)
  if autoaugment:  # official order: crop, flip, CIFAR10Policy, ToTensor, Cutout, Normalize
    images = _autoaugment.apply_policy(images, params["policy"])
  if cutout_size > 0:
    images = jax.vmap(lambda x, c: _apply_cutout(x, c, cutout_size))(images, params["centre"])
  return images


def augment(key, images, *, crop_padding: int = 4, flip: bool = True, cutout_size: int = 0,
            autoaugment: bool = False):
  """The CIFAR training transform: random crop with padding, horizontal flip, optional
  AutoAugment CIFAR-10 policy, optional Cutout.

  Order as in the GALA/BALMS transform list (crop, flip, CIFAR10Policy, Cutout); normalise
  afterwards with `normalize` (the official Cutout zeroes `x / 255` before `Normalize`, the same as
  zeroing uint8 here). Deterministic in `key`; each image gets independent draws. Without
  AutoAugment this equals `cutout(k3, random_flip(k2, random_crop(k1, x)))` with
  `k1, k2, k3 = jax.random.split(key, 3)`; the policy draws from `fold_in(key, 3)`.
  `crop_padding=0, flip=False, cutout_size=0, autoaugment=False` is the identity.

  Args:
    key: PRNG key.
    images: [B, H, W, C] (uint8 or float; uint8 RGB with `autoaugment`).
    crop_padding: padding of the random crop (0: no crop).
    flip: random horizontal flips.
    cutout_size: side of the Cutout square (0: none; 16 in GALA/BALMS).
    autoaugment: AutoAugment's CIFAR-10 policy (`ltjax.data.cifar10_policy`) after the flip.

  Returns:
    [B, H, W, C], same dtype.
  """
  _check_images(images)
  if crop_padding < 0:
    raise ValueError(f"`crop_padding` must be >= 0, got {crop_padding}.")
  if autoaugment:
    _check_policy_input(images)
  params = augment_params(key, *images.shape[:3], crop_padding=crop_padding,
                          autoaugment=autoaugment)
  return apply_augment(images, params, crop_padding=crop_padding, flip=flip,
                       cutout_size=cutout_size, autoaugment=autoaugment)
