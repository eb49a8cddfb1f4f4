"""Moved into the package: `experiments.configs.imagenet_lt_rx50` is
`ltjax.recipes.imagenet_lt_rx50`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import imagenet_lt_rx50 as _module

get_config = _module.get_config
sys.modules[__name__] = _module
