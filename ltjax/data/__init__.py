"""ltjax.data: long-tailed splits, data sources and input pipelines.

Importing this package imports neither TensorFlow nor tensorflow_datasets; the functions that need
them import them on first use.
"""
from ltjax.data._cifar_binary import DatasetUnavailableError
from ltjax.data._cifar_binary import read_cifar_binary
from ltjax.data._sources import ImageArrays
from ltjax.data._sources import array_source
from ltjax.data._sources import default_data_dir
from ltjax.data._sources import default_manual_dir
from ltjax.data._sources import load_arrays
from ltjax.data._sources import prepare
from ltjax.data._sources import shared_data_dir
from ltjax.data._splits import LongTailSplit
from ltjax.data._splits import longtail_counts
from ltjax.data._splits import longtail_indices
from ltjax.data._splits import longtail_split
from ltjax.data._splits import split_fingerprint
from ltjax.data._splits import validation_indices
