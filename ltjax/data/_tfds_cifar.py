"""TFDS builder `cifar10_binary`: the stock `cifar10` builder fed from a local copy of the official
binary layout (archive or folder in `manual_dir`), checked by member MD5.

The result is an ordinary TFDS dataset with the stock builder's features, version and record order,
so `tfds.data_source("cifar10_binary", ...)` matches `tfds.data_source("cifar10", ...)` record for
record. CIFAR-100 has no such builder yet (its stock builder also needs the coarse labels and no
copy was at hand to test one); `load_arrays("cifar100")` reads the binary layout directly.
Importing this module imports tensorflow_datasets but not TensorFlow; preparing needs TensorFlow.
"""
from __future__ import annotations

import pathlib
from typing import cast

import tensorflow_datasets as tfds
from tensorflow_datasets.image_classification import cifar

from ltjax.data import _cifar_binary


class Cifar10Binary(cifar.Cifar10):
  """CIFAR-10 from a local official binary archive or folder (`manual_dir`), MD5-checked."""

  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put cifar-10-binary.tar.gz (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz) or "
      "its extracted cifar-10-batches-bin/ folder in manual_dir.")

  def _split_generators(self, dl_manager):
    splits = _cifar_binary.read_cifar_binary("cifar10", pathlib.Path(dl_manager.manual_dir))
    # tfds types `info.features` as any connector; the stock cifar10 builder's is a FeaturesDict.
    features = cast(tfds.features.FeaturesDict, self.info.features)
    cast(tfds.features.ClassLabel, features["label"]).names = _cifar_binary.CIFAR10_CLASS_NAMES
    return {split: self._generate_examples(f"{split}_", arrays) for split, arrays in splits.items()}

  def _generate_examples(self, split_prefix, filepaths):
    # The stock builder's argument name; here it holds the split's (images, labels) arrays.
    images, labels = filepaths
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"id": f"{split_prefix}{index:05d}", "image": image, "label": int(label)}
