"""Moved into the package: `experiments.configs.inat18_r50` is `ltjax.recipes.inat18_r50`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import inat18_r50 as _module

get_config = _module.get_config
sys.modules[__name__] = _module
