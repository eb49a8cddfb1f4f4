"""Moved into the package: `experiments.configs.los_r34` is `ltjax.recipes.los_r34`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import los_r34 as _module

get_config = _module.get_config
sys.modules[__name__] = _module
