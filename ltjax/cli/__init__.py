"""ltjax's command lines (absl apps): the training CLI `ltjax-train` (`ltjax.cli.train`) with its
run driver (`experiment`, `training`, `streaming`, `epoch_log`, `preemption`, `provenance`,
`runtime`, `shared_data`, `plugins`), and the flag handling shared with the reproduction CLI.

Needs the `[train]` and `[data]` extras (absl, ml_collections, flax, TFDS); `import ltjax` never
imports this package, and this file imports nothing, so each module loads only when used.
"""
