"""Moved into the package: `experiments.configs.ldam_r32` is `ltjax.recipes.ldam_r32`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import ldam_r32 as _module

get_config = _module.get_config
sys.modules[__name__] = _module
