"""Moved into the package: `experiments.configs.common` is `ltjax.recipes.common`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import common as _module

sys.modules[__name__] = _module
