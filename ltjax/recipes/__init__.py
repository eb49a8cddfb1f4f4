"""The training recipes: one `get_config()` file per recipe (`ltjax-train --config=NAME`).

`common.py` is the config schema (every key with its default), `validation.py` the keys'
domains and `large_scale.py` the shared set-up of the large datasets' recipes; the other modules
are recipes. This package's own import reads no module (no ml_collections): `names` and
`path` only look at the files, so the CLI can resolve `--config=NAME` before absl parses.
"""
from __future__ import annotations

import os
import pathlib

# Modules of this package that are not recipes (the schema and the shared parts).
_NOT_RECIPES = frozenset({"__init__", "common", "validation", "large_scale"})
_FOLDER = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  """The packaged recipes' names, sorted (`fmnist_cnn`, `ldam_r32`, ...)."""
  return sorted(p.stem for p in _FOLDER.glob("*.py") if p.stem not in _NOT_RECIPES)


def path(name: str) -> pathlib.Path | None:
  """The file of the packaged recipe `name`, or None when there is no such recipe."""
  return _FOLDER / f"{name}.py" if name in names() else None


def resolve(value: str) -> str:
  """`--config`'s value with a packaged recipe's name (`fmnist_cnn[:arg]`) made its file; a path
  stays as it is (a missing file is reported by the flags parser).

  Raises:
    ValueError: `value` is neither a file nor a packaged recipe; the message is one line
      listing the packaged recipes.
  """
  name, sep, arg = value.partition(":")
  if os.path.isfile(name) or name.endswith(".py") or os.sep in name:
    return value
  found = path(name)
  if found is None:
    raise ValueError(f"--config={value}: no recipe file or packaged recipe named {name!r}; the "
                     f"packaged recipes are {', '.join(names())} (or pass a recipe file's path).")
  return f"{found}{sep}{arg}"
