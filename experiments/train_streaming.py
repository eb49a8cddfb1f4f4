"""`experiments.train_streaming` is `ltjax.cli.streaming` (moved into the package).

The same module object, so that monkeypatching `experiments.train_streaming.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import streaming as _module

sys.modules[__name__] = _module
