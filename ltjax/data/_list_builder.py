"""The prepared list datasets (`lt_lists`, `ltjax.data._tfds_lt`) behind functions that import
TFDS (~0.4 s) only when a list split is prepared or read, so that `import ltjax.data` stays light.
"""
from __future__ import annotations


def prepare_lt_lists(name_or_config, *, image_root, list_dir=None, data_dir=None,
                     verify: bool = True):
  """Prepares (once) "imagenet_lt", "places_lt", "inat18" (or a `LongTailListConfig`) from its
  lists and image root as ArrayRecord shards; returns the TFDS builder. See `ltjax.data._tfds_lt`.
  Needs TensorFlow (`pip install ltjax[prepare]`)."""
  from ltjax.data import _tfds_lt  # noqa: PLC0415 (TFDS: see the module docstring)
  return _tfds_lt.prepare_lt_lists(name_or_config, image_root=image_root, list_dir=list_dir,
                                   data_dir=data_dir, verify=verify)


def lt_lists_source(builder, split: str):
  """`(source, labels)` of a prepared list split: records with encoded "image" bytes, and the
  labels i64[N] in record (= list) order."""
  from ltjax.data import _tfds_lt  # noqa: PLC0415 (TFDS: see the module docstring)
  return _tfds_lt.lt_lists_source(builder, split)
