"""Moved into the package: `experiments.configs.validation` is `ltjax.recipes.validation`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import validation as _module

sys.modules[__name__] = _module
