"""`experiments.runtime` is `ltjax.cli.runtime` (moved into the package).

The same module object, so that monkeypatching `experiments.runtime.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import runtime as _module

sys.modules[__name__] = _module
