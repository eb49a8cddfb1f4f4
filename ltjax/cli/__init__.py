"""ltjax's command lines (absl apps): shared flag handling for the training and reproduction CLIs.

Needs the `[train]` extra (absl, ml_collections); `import ltjax` never imports this package.
"""
