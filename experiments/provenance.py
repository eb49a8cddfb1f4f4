"""`experiments.provenance` is `ltjax.cli.provenance` (moved into the package).

The same module object, so that monkeypatching `experiments.provenance.X` patches what the CLI
runs.
"""
import sys

from ltjax.cli import provenance as _module

sys.modules[__name__] = _module
