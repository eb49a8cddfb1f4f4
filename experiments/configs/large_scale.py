"""Moved into the package: `experiments.configs.large_scale` is `ltjax.recipes.large_scale`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import large_scale as _module

sys.modules[__name__] = _module
