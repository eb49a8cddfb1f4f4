"""Flag parsing for CLIs with an ml_collections config flag: one line per mistake, config help.

absl's own parser turns a bad flag value into one line, but a config override naming a key the
recipe does not have (`--config.num_epoch=1`) escapes it as a 50-line `AttributeError` traceback
from inside ml_collections. `parse_flags` is an `app.run(..., flags_parser=)` that reports such a
key with the closest existing one, and answers `--config_help` with the recipe's keys, the
registered methods and their hyperparameters' domains.
"""
from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from collections.abc import Callable
from collections.abc import Sequence

from absl import flags

from ltjax import recipes

CONFIG_HELP = "--config_help"


def flag_values(argv: Sequence[str], name: str) -> list[tuple[int, str, str]]:
  """Every value given to `--name` in argv (absl's spellings `--name=V` and `--name V`; argv[0]
  is the program, `--` ends the flags), as `(index, prefix, value)` with
  `argv[index] == prefix + value`, so that a caller can also rewrite it in place."""
  out = []
  for i in range(1, len(argv)):
    arg = argv[i]
    if arg == "--":
      break
    if arg.startswith(f"--{name}="):
      out.append((i, f"--{name}=", arg[len(name) + 3:]))
    elif arg == f"--{name}" and i + 1 < len(argv):
      out.append((i + 1, "", argv[i + 1]))
  return out


def _flag_value(argv: Sequence[str], name: str) -> str | None:
  """The value of `--name=V` or `--name V` in argv (the last one wins, as in absl)."""
  values = flag_values(argv, name)
  return values[-1][2] if values else None


def resolve_recipe_argv(argv: Sequence[str], name: str = "config") -> list[str]:
  """argv with each `--config=NAME` / `--config NAME` made the packaged recipe's file
  (`ltjax.recipes.resolve`), before absl and ml_collections (which read only files) parse it.

  Raises:
    ValueError: a value is neither a file nor a packaged recipe (one line).
  """
  out = list(argv)
  for i, prefix, value in flag_values(argv, name):
    out[i] = prefix + recipes.resolve(value)
  return out


def _overrides(argv: Sequence[str], name: str) -> list[str]:
  """The dotted keys overridden as `--name.KEY=V` / `--name.KEY V` in argv."""
  keys = []
  for arg in argv:
    if arg.startswith(f"--{name}."):
      keys.append(arg[len(name) + 3:].split("=", 1)[0])
  return keys


def flat_keys(config, prefix: str = "") -> dict[str, object]:
  """`{"a.b": value}` for every leaf of a ConfigDict (or dict)."""
  out = {}
  for key, value in config.items():
    path = f"{prefix}{key}"
    if hasattr(value, "items"):
      out[path] = value
      out.update(flat_keys(value, prefix=f"{path}."))
    else:
      out[path] = value
  return out


def load_config(path: str):
  """`get_config()` of a recipe file, without absl (for help and messages).

  Raises:
    FileNotFoundError: the file does not exist.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config={path}: no such recipe file.")
  spec = importlib.util.spec_from_file_location("_ltjax_recipe_for_help", path)
  assert spec is not None and spec.loader is not None
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def unknown_key_line(config, key: str, name: str = "config") -> str | None:
  """One line for an override of a key the config lacks, with the nearest keys; None if known."""
  keys = flat_keys(config)
  if key in keys:
    return None
  parent = key.rsplit(".", 1)[0] if "." in key else ""
  siblings = [k for k in keys if (k.rsplit(".", 1)[0] if "." in k else "") == parent]
  close = difflib.get_close_matches(key, siblings or list(keys), n=1, cutoff=0.6)
  hint = f"; did you mean --{name}.{close[0]}?" if close else ""
  return (f"--{name}.{key}: the recipe has no key {key!r}{hint} "
          f"({CONFIG_HELP} lists the keys)")


def config_help(config, methods: dict | None = None) -> str:
  """The text of `--config_help`: the recipe's keys with their values, then every registered
  method with its hyperparameters (name, default, domain, meaning)."""
  lines = [f"Recipe {config.get('recipe', '') or '(unnamed)'}: keys (set with --config.KEY=VALUE)"]
  for key, value in flat_keys(config).items():
    if not hasattr(value, "items"):
      lines.append(f"  {key} = {value!r}")
  if methods:
    lines.append("")
    lines.append("Methods (--config.method=NAME) and their hyperparameters "
                 "(--config.hparams.NAME=VALUE):")
    for name in sorted(methods):
      method = methods[name]
      lines.append(f"  {name}  [{method.stage}, {method.head} head]")
      for hp in method.hparams:
        lines.append(f"      {hp.name} = {hp.default!r}  ({hp.domain})  {hp.doc}")
  return "\n".join(lines)


def parse_flags(argv: list[str], *, name: str = "config",
                methods: Callable[[], dict] | None = None) -> list[str]:
  """Parses argv into absl's FLAGS; exits with one line on a mistake (`app.run`'s flags_parser).

  Args:
    argv: the command line.
    name: the config flag's name.
    methods: returns the method registry for `--config_help` (called only then).

  Returns:
    The positional arguments absl leaves (argv[0] first).
  """
  if CONFIG_HELP in argv:
    path = _flag_value(argv, name)
    if path is None:
      sys.exit(f"{CONFIG_HELP} needs --{name}=<recipe file>.")
    try:
      config = load_config(path)
    except FileNotFoundError as e:
      sys.exit(str(e))
    print(config_help(config, methods() if methods else None))
    sys.exit(0)
  path = _flag_value(argv, name)
  if path and not os.path.isfile(path.split(":", 1)[0]):
    sys.exit(f"--{name}={path}: no such recipe file.")
  keys = _overrides(argv, name)
  if path and keys:
    # Checked before absl parses: ml_collections raises an unknown key as a traceback.
    config = load_config(path.split(":", 1)[0])
    for key in keys:
      line = unknown_key_line(config, key, name)
      if line is not None:
        sys.exit(line)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"{os.path.basename(argv[0])}: {e} (--helpfull lists the flags)")
