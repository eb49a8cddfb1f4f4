"""`--import=module[,module]`: the CLIs (`experiments.main`, `experiments.reproduce`) import these
modules before they read their flags and configuration, so that a user's own methods
(`ltjax.train.register_method(...)` at the module's top level) are known to the config
validation, the tables and the runner without editing ltjax.

    PYTHONPATH=path/to/my_code ltjax-train --import=my_methods \
        --config=fmnist_cnn --config.method=my_method --workdir=DIR

A module that cannot be imported (not found, or its top level raises) ends the command with one
line naming it and exit status 1. Modules are imported in order, once; a module should only
register things at import (no arrays: the CLI configures JAX's devices after importing it).
"""
from __future__ import annotations

import importlib
import sys

from absl import flags

from ltjax.cli import _config_flags

FLAG = "import"
flags.DEFINE_list(FLAG, [], "Modules to import before the configuration is read (comma-"
                  "separated), e.g. your own ltjax.train.register_method(...) calls; found on "
                  "sys.path (the current folder and PYTHONPATH).")


def modules_in(argv) -> list[str]:
  """The module names of every `--import=a,b` / `--import a,b` in `argv` (absl's spellings)."""
  return [name.strip() for _, _, value in _config_flags.flag_values(argv, FLAG)
          for name in value.split(",") if name.strip()]


def import_modules(argv) -> list[str]:
  """Imports the `--import` modules of `argv`; exits with one line if one fails. Returns them."""
  names = modules_in(argv)
  for name in names:
    try:
      importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 (any failure of the user's module is reported as one line)
      reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
      kind = "not found" if isinstance(e, ModuleNotFoundError) and e.name == name else (
          f"{type(e).__name__}: {reason}")
      sys.exit(f"--import={name}: cannot import module {name!r} ({kind}); it must be on "
               f"sys.path (the current folder or PYTHONPATH).")
  return names
