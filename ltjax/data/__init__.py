"""ltjax.data: long-tailed splits, data sources and input pipelines.

Splits (NumPy, host): `longtail_counts`, `longtail_indices` (protocols "ldam", "first",
"random"), `validation_indices`, `longtail_split` -> `LongTailSplit`, `split_fingerprint`.
Sources: `load_arrays(dataset, split, data_dir=, manual_dir=, download=)` -> `ImageArrays` for any
TFDS image-classification builder (offline from `manual_dir` unless `download=True`; `is_prepared`
checks without TFDS), CIFAR in
the official binary layout (`read_cifar_binary`, and the TFDS builder `cifar10_binary`), plain
arrays (`array_source`); a missing or corrupt dataset raises `DatasetUnavailableError`.
Pipelines: on-device (`DevicePipeline`, the one pipeline training runs: `epoch_order` with its
`SAMPLERS`, `epoch_steps`, the key scheme `order_key` / `step_keys`, `step_indices`,
`device_batch`; `augment`, `normalize`, AutoAugment's `cifar10_policy`; the recipes' presets
`AUGMENTATIONS`, `HOST_AUGMENTATIONS`, `NORMALIZATION`); the training loop's
inputs (`DeviceArrays`, `HostArrays` with `array_batches`, `ImageLists`: see `ltjax.train.fit`);
streaming (`process_columns`, `tfds_source`, `global_batch`); host JPEG
decoding with the ImageNet augmentations (`decode_random_resized_crop`, `decode_center_crop`) and
its grain streams (`train_image_batches`, `eval_image_batches`: per-process shards, resumable).
List-defined splits (ImageNet-LT, Places-LT, iNaturalist 2018): `read_list` -> `ListSplit`,
`shot_groups`, `prepare_lt_lists` (one TFDS builder, `lt_lists`, for the family) and
`lt_lists_source`.
The LA paper's Gaussian mixture lives in `ltjax.data.synthetic`.

Importing this package imports neither TensorFlow nor tensorflow_datasets; the functions that need
them import them on first use.
"""
from ltjax.data._augment import CIFAR_MEAN
from ltjax.data._augment import CIFAR_STD
from ltjax.data._augment import apply_augment
from ltjax.data._augment import augment
from ltjax.data._augment import augment_params
from ltjax.data._augment import cutout
from ltjax.data._augment import normalize
from ltjax.data._augment import random_crop
from ltjax.data._augment import random_flip
from ltjax.data._autoaugment import cifar10_policy
from ltjax.data._cifar_binary import DatasetUnavailableError
from ltjax.data._cifar_binary import read_cifar_binary
from ltjax.data._decode import color_jitter
from ltjax.data._decode import decode_center_crop
from ltjax.data._decode import decode_random_resized_crop
from ltjax.data._device import SAMPLERS
from ltjax.data._device import DevicePipeline
from ltjax.data._device import device_batch
from ltjax.data._device import epoch_order
from ltjax.data._device import epoch_steps
from ltjax.data._device import order_key
from ltjax.data._device import step_indices
from ltjax.data._device import step_keys
from ltjax.data._image_stream import eval_image_batches
from ltjax.data._image_stream import train_image_batches
from ltjax.data._inputs import DeviceArrays
from ltjax.data._inputs import HostArrays
from ltjax.data._inputs import ImageLists
from ltjax.data._inputs import array_batches
from ltjax.data._inputs import order_batch_fn
from ltjax.data._list_builder import lt_lists_source
from ltjax.data._list_builder import prepare_lt_lists
from ltjax.data._lt_lists import LIST_DATASETS
from ltjax.data._lt_lists import ListSplit
from ltjax.data._lt_lists import parse_list
from ltjax.data._lt_lists import read_list
from ltjax.data._lt_lists import shot_groups
from ltjax.data._presets import AUGMENTATIONS
from ltjax.data._presets import HOST_AUGMENTATIONS
from ltjax.data._presets import NORMALIZATION
from ltjax.data._sources import ImageArrays
from ltjax.data._sources import array_source
from ltjax.data._sources import default_data_dir
from ltjax.data._sources import default_manual_dir
from ltjax.data._sources import is_prepared
from ltjax.data._sources import load_arrays
from ltjax.data._sources import prepare
from ltjax.data._splits import PROTOCOLS
from ltjax.data._splits import LongTailSplit
from ltjax.data._splits import longtail_counts
from ltjax.data._splits import longtail_indices
from ltjax.data._splits import longtail_split
from ltjax.data._splits import split_fingerprint
from ltjax.data._splits import validation_indices
from ltjax.data._streaming import IndexSubset
from ltjax.data._streaming import global_batch
from ltjax.data._streaming import process_columns
from ltjax.data._streaming import tfds_source

__all__ = (
    "AUGMENTATIONS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "HOST_AUGMENTATIONS",
    "LIST_DATASETS",
    "NORMALIZATION",
    "PROTOCOLS",
    "SAMPLERS",
    "DatasetUnavailableError",
    "DeviceArrays",
    "DevicePipeline",
    "HostArrays",
    "ImageArrays",
    "ImageLists",
    "IndexSubset",
    "ListSplit",
    "LongTailSplit",
    "apply_augment",
    "array_batches",
    "array_source",
    "augment",
    "augment_params",
    "cifar10_policy",
    "color_jitter",
    "cutout",
    "decode_center_crop",
    "decode_random_resized_crop",
    "default_data_dir",
    "default_manual_dir",
    "device_batch",
    "epoch_order",
    "epoch_steps",
    "eval_image_batches",
    "global_batch",
    "is_prepared",
    "load_arrays",
    "longtail_counts",
    "longtail_indices",
    "longtail_split",
    "lt_lists_source",
    "normalize",
    "order_batch_fn",
    "order_key",
    "parse_list",
    "prepare",
    "prepare_lt_lists",
    "process_columns",
    "random_crop",
    "random_flip",
    "read_cifar_binary",
    "read_list",
    "shot_groups",
    "split_fingerprint",
    "step_indices",
    "step_keys",
    "tfds_source",
    "train_image_batches",
    "validation_indices",
)
