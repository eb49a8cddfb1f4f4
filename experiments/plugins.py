"""`experiments.plugins` is `ltjax.cli.plugins` (moved into the package).

The same module object, so that monkeypatching `experiments.plugins.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import plugins as _module

sys.modules[__name__] = _module
