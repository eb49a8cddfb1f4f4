"""`python -m experiments.main ...` is `ltjax-train ...` (the CLI moved to ltjax/cli/train.py):
the same flags, `--import` plugins and recipe names or files."""
import sys

from ltjax.cli import train as _module

if __name__ == "__main__":
  _module.main()
else:
  sys.modules[__name__] = _module
