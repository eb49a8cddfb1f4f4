"""The checkout's offline data: the project's shared, read-only copy of the raw archives.

The library never guesses where a repository keeps its data (`ltjax.data` defaults to TFDS's own
folders); the experiments, and the tests, pass this copy explicitly as `manual_dir`. It lives at
`$LTJAX_SHARED_DATA`, else `<repo>/../shared/data`, next to this checkout.
"""
from __future__ import annotations

import os
import pathlib

import ltjax

ENV = "LTJAX_SHARED_DATA"
# The folder of each dataset's raw archives inside the shared data dir.
FOLDERS = {"fashion_mnist": "fashion-mnist", "cifar10": "cifar10", "cifar10_binary": "cifar10",
           "cifar100": "cifar100"}


def shared_data_dir() -> pathlib.Path:
  """`$LTJAX_SHARED_DATA`, else `<repo>/../shared/data`."""
  env = os.environ.get(ENV)
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def manual_dir(dataset: str, data_dir=None) -> pathlib.Path:
  """The raw files of `dataset` to prepare it from: the shared copy when the checkout has one,
  else TFDS's manual folder under `data_dir` (`ltjax.data.default_manual_dir`)."""
  shared = shared_data_dir() / FOLDERS.get(dataset, "")
  if dataset in FOLDERS and shared.is_dir():
    return shared
  return ltjax.data.default_manual_dir(dataset, data_dir)
