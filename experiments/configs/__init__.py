"""The recipes moved into the package (`ltjax/recipes`, `ltjax-train --config=NAME`); each file
here stays so that `--config=experiments/configs/<recipe>.py` and `experiments.configs.<recipe>`
keep working, and is the packaged module."""
