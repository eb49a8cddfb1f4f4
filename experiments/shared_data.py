"""`experiments.shared_data` is `ltjax.cli.shared_data` (moved into the package).

The same module object, so that monkeypatching `experiments.shared_data.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import shared_data as _module

sys.modules[__name__] = _module
