"""`experiments.experiment` is `ltjax.cli.experiment` (moved into the package).

The same module object, so that monkeypatching `experiments.experiment.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import experiment as _module

sys.modules[__name__] = _module
