"""Moved into the package: `experiments.configs.places_lt_r152` is `ltjax.recipes.places_lt_r152`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import places_lt_r152 as _module

get_config = _module.get_config
sys.modules[__name__] = _module
