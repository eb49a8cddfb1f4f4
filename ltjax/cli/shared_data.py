"""The offline raw archives: the project's shared, read-only copy (`$LTJAX_SHARED_DATA`).

The library never guesses where a repository keeps its data (`ltjax.data` defaults to TFDS's own
folders); the CLI, the experiments and the tests pass this copy explicitly as `manual_dir`. It
lives at `$LTJAX_SHARED_DATA`, else, in a checkout (ltjax imported from the repository, not from
site-packages), at `<repo>/../shared/data`, next to it. An installed ltjax has no such default:
set the variable (or `--config.manual_dir`) there.
"""
from __future__ import annotations

import os
import pathlib

import ltjax

ENV = "LTJAX_SHARED_DATA"
# The folder of each dataset's raw archives inside the shared data dir.
FOLDERS = {"fashion_mnist": "fashion-mnist", "cifar10": "cifar10", "cifar10_binary": "cifar10",
           "cifar100": "cifar100"}


def checkout_root() -> pathlib.Path | None:
  """The repository ltjax is imported from (it holds pyproject.toml and experiments/), or None
  for an installed package (site-packages has neither beside `ltjax/`)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  if (root / "pyproject.toml").is_file() and (root / "experiments").is_dir():
    return root
  return None


def shared_data_dir() -> pathlib.Path | None:
  """`$LTJAX_SHARED_DATA`, else `<repo>/../shared/data` in a checkout, else None (installed)."""
  env = os.environ.get(ENV)
  if env:
    return pathlib.Path(env).expanduser()
  root = checkout_root()
  return None if root is None else root.parent / "shared" / "data"


def missing_hint(dataset: str) -> str:
  """What to set when `dataset`'s raw files are not found: `$LTJAX_SHARED_DATA` (when it is one
  of the shared copy's datasets and the variable is unset outside a checkout), or manual_dir."""
  if dataset in FOLDERS and shared_data_dir() is None:
    return (f"set ${ENV} to the folder holding {FOLDERS[dataset]}/ (the shared raw archives), "
            "or --config.manual_dir")
  return "put the official archives there (or set --config.manual_dir)"


def manual_dir(dataset: str, data_dir=None) -> pathlib.Path:
  """The raw files of `dataset` to prepare it from: the shared copy when there is one, else
  TFDS's manual folder under `data_dir` (`ltjax.data.default_manual_dir`)."""
  shared = shared_data_dir()
  if dataset in FOLDERS and shared is not None and (shared / FOLDERS[dataset]).is_dir():
    return shared / FOLDERS[dataset]
  return ltjax.data.default_manual_dir(dataset, data_dir)
