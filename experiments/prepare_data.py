r"""Prepares a TFDS image-classification dataset into a data dir, offline by default.

    python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR] [--manual_dir=DIR]
    python -m experiments.prepare_data --dataset=cifar10          # builds `cifar10_binary` offline
    python -m experiments.prepare_data --dataset=imagenet_lt --manual_dir=/data/imagenet \
        [--list_dir=/data/lt-lists]     # ImageNet-LT / places_lt / inat18 from their list files
    python -m experiments.prepare_data --dataset=places365_small --download   # needs internet

Defaults: data_dir `$LTJAX_DATA_DIR` or `~/tensorflow_datasets`; manual_dir the shared offline
copy (`$LTJAX_SHARED_DATA` or `<repo>/../shared/data`) when it has the dataset. Prints the
prepared splits and the time taken; a missing or corrupt dataset ends with one clear message.
"""
import time

from absl import app
from absl import flags

from experiments import shared_data
from ltjax import data

_DATASET = flags.DEFINE_string("dataset", None, "TFDS builder name.", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where prepared datasets go.")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Where the raw archives are.")
_DOWNLOAD = flags.DEFINE_bool("download", False, "Let TFDS download what is missing.")
_LIST_DIR = flags.DEFINE_string("list_dir", None, "imagenet_lt / places_lt / inat18: the folder "
                                "of the list files (default: manual_dir, the image root).")
# Datasets defined by list files; manual_dir is their image root.
_LIST_DATASETS = ("imagenet_lt", "places_lt", "inat18")


def main(argv):
  del argv
  start = time.perf_counter()
  try:
    if _DATASET.value in _LIST_DATASETS:
      if not _MANUAL_DIR.value:
        raise app.UsageError(f"{_DATASET.value}: pass --manual_dir=<image root>.")
      builder = data.prepare_lt_lists(_DATASET.value, image_root=_MANUAL_DIR.value,
                                      list_dir=_LIST_DIR.value, data_dir=_DATA_DIR.value)
    else:
      manual_dir = _MANUAL_DIR.value or shared_data.manual_dir(_DATASET.value, _DATA_DIR.value)
      builder = data.prepare(_DATASET.value, data_dir=_DATA_DIR.value, manual_dir=manual_dir,
                             download=_DOWNLOAD.value)
  except (data.DatasetUnavailableError, FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
  seconds = time.perf_counter() - start
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  print(f"{builder.name} {builder.version} at {builder.data_dir}: {splits} ({seconds:.1f} s)")


if __name__ == "__main__":
  app.run(main)
