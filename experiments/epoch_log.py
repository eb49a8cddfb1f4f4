"""`experiments.epoch_log` is `ltjax.cli.epoch_log` (moved into the package).

The same module object, so that monkeypatching `experiments.epoch_log.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import epoch_log as _module

sys.modules[__name__] = _module
