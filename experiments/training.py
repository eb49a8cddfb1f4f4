"""`experiments.training` is `ltjax.cli.training` (moved into the package).

The same module object, so that monkeypatching `experiments.training.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import training as _module

sys.modules[__name__] = _module
