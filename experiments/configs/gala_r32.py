"""Moved into the package: `experiments.configs.gala_r32` is `ltjax.recipes.gala_r32`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import gala_r32 as _module

get_config = _module.get_config
sys.modules[__name__] = _module
