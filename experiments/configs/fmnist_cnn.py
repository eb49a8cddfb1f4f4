"""Moved into the package: `experiments.configs.fmnist_cnn` is `ltjax.recipes.fmnist_cnn`.

The same module object; the file stays so that `--config=` paths to it still work.
"""
import sys

from ltjax.recipes import fmnist_cnn as _module

get_config = _module.get_config
sys.modules[__name__] = _module
