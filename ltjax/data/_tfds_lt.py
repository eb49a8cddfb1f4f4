"""TFDS builder `lt_lists`: ImageNet-LT, Places-LT and iNaturalist 2018 from their list files.

One builder for the whole family; a `LongTailListConfig` names the list file of each split and the
number of classes. `manual_dir` is the image root (the folder the list paths are relative to:
ImageNet's `train/` and `val/`, Places365's `train/` and `val/`, iNaturalist's `train_val2018/`);
the list files sit in `config.list_dir`, default the image root itself.

Each record keeps the original encoded image bytes (no re-encoding; decoding happens in the input
pipeline, `ltjax.data.decode_and_augment`), the label, the relative path, the line index in the list
and the SHA-256 of the image file, so any record can be checked against its source. Records are
stored in list order (`disable_shuffling`): record i of a split is line i of its list, so the list's
labels and class counts describe the prepared split without reading it. The dataset metadata holds,
per split, the list's file SHA-256, its fingerprint and class counts; a list whose SHA-256 is
published (the lists in the decoupling repository) must match it.

Importing this module imports tensorflow_datasets; preparing needs TensorFlow.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import ClassVar
from typing import cast

import numpy as np
import tensorflow_datasets as tfds

from ltjax.data import _lt_lists
from ltjax.data import _sources

# SHA-256 of the published lists (facebookresearch/classifier-balancing data/, see the README of
# ../shared/data/lt-lists); a file with one of these names and another digest is refused.
KNOWN_LIST_SHA256 = {
    "Places_LT_train.txt": "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7",
    "Places_LT_val.txt": "719e3cf3766c09134ea28f56f1036c78def511ac1ed2c2532a6beef78f2439ba",
    "Places_LT_test.txt": "44eee8441c8098c59195465abede425721bc35525d75209f9433b161a6eb37bc",
    "ImageNet_LT_val.txt": "9af7ba688acf9532ff5845a8fb14a1e97fdc4c51ac48bc72c08ea9c3f7ff142e",
    "ImageNet_LT_test.txt": "d1590191cf8a71fada7b1aaedaa2d139a2aea93ff2f1b755319d0bd8dbaa55d5",
    "iNaturalist18_val.txt": "efaeff65f80641b60864470e6f255aa69453406ef5717eec8c6681748f3a61f3",
}


@dataclasses.dataclass(eq=False)
class LongTailListConfig(tfds.core.BuilderConfig):
  """A member of the list family.

  Attributes:
    lists: split name -> list file name.
    num_classes: C.
    list_dir: folder of the list files; None: the image root (`manual_dir`).
    verify_published: refuse a list named like a published one whose SHA-256 differs (False for
      generated test lists).
  """
  lists: dict = dataclasses.field(default_factory=dict)
  num_classes: int = 0
  list_dir: str | None = None
  verify_published: bool = True


FAMILY = (
    LongTailListConfig(
        name="imagenet_lt", description="ImageNet-LT (Liu et al. 2019), 1,000 classes.",
        num_classes=1000, lists={"train": "ImageNet_LT_train.txt",
                                 "validation": "ImageNet_LT_val.txt",
                                 "test": "ImageNet_LT_test.txt"}),
    LongTailListConfig(
        name="places_lt", description="Places-LT (Liu et al. 2019), 365 classes.",
        num_classes=365, lists={"train": "Places_LT_train.txt", "validation": "Places_LT_val.txt",
                                "test": "Places_LT_test.txt"}),
    LongTailListConfig(
        name="inat18", description="iNaturalist 2018 as in the decoupling code: its val list is "
        "the test split.", num_classes=8142,
        lists={"train": "iNaturalist18_train.txt", "test": "iNaturalist18_val.txt"}),
)

if tuple(c.name for c in FAMILY) != _lt_lists.LIST_DATASETS:  # one list of names, two layers
  raise ImportError("ltjax.data._lt_lists.LIST_DATASETS differs from the lt_lists family.")


def _file_sha256(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def read_config_lists(config: LongTailListConfig, list_dir, *, verify: bool = True) -> dict:
  """split -> (`ListSplit`, file SHA-256) for every list of `config`, checked (against the
  published SHA-256 too when `verify` and `config.verify_published`)."""
  list_dir = pathlib.Path(list_dir)
  out = {}
  for split, name in config.lists.items():
    path = list_dir / name
    if not path.is_file():
      raise FileNotFoundError(f"{config.name}: the {split} list {name} is not in {list_dir}.")
    sha = _file_sha256(path)
    known = KNOWN_LIST_SHA256.get(name) if verify and config.verify_published else None
    if known is not None and sha != known:
      raise ValueError(f"{path} has SHA-256 {sha}, not the published list's {known}.")
    out[split] = (_lt_lists.read_list(path, num_classes=config.num_classes), sha)
  return out


class LtLists(tfds.core.GeneratorBasedBuilder):
  """ImageNet-LT / Places-LT / iNaturalist 2018 from list files and a local image root."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Records in list order with image SHA-256."}
  BUILDER_CONFIGS: ClassVar[list] = list(FAMILY)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the images under manual_dir so that the paths in the list files resolve against it "
      "(ImageNet: train/ and val/ class folders; Places365: train/ and val/; iNaturalist 2018: "
      "train_val2018/), and the list files (ImageNet_LT_*.txt, Places_LT_*.txt, "
      "iNaturalist18_*.txt from facebookresearch/classifier-balancing data/) in manual_dir or "
      "the config's list_dir.")
  # Per-run choices, set by `prepare_lt_lists` (TFDS keys configs by name, so they cannot live
  # on the config): the folder of the list files, and whether published lists are checked.
  list_dir: str | None = None
  verify_published: bool = True

  @property
  def _list_config(self) -> LongTailListConfig:
    """The builder's config, as its own type (TFDS types it as an optional BuilderConfig)."""
    return cast(LongTailListConfig, self.builder_config)

  def _info(self):
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=self._list_config.num_classes),
            "path": tfds.features.Text(),
            "index": tfds.features.Scalar(dtype=np.int64),
            "sha256": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    root = pathlib.Path(dl_manager.manual_dir)
    list_dir = pathlib.Path(self.list_dir or self._list_config.list_dir or root)
    splits = read_config_lists(self._list_config, list_dir, verify=self.verify_published)
    # Set in `_info`; tfds types `info.metadata` as optional.
    metadata = cast(tfds.core.MetadataDict, self.info.metadata)
    for split, (listed, sha) in splits.items():
      missing = [p for p in listed.paths[:1000] if not (root / p).is_file()]
      if missing:
        raise FileNotFoundError(f"{len(missing)} of the first 1000 images of the {split} list are "
                                f"not under {root}, e.g. {missing[0]}.")
      metadata[split] = dict(list_sha256=sha, labels=listed.labels.tolist(), **listed.summary())
    return {split: self._generate_examples(root, listed) for split, (listed, _) in splits.items()}

  def _generate_examples(self, root, listed):
    for index, (path, label) in enumerate(zip(listed.paths, listed.labels)):
      data = (root / path).read_bytes()
      yield index, {"image": data, "label": int(label), "path": path, "index": index,
                    "sha256": hashlib.sha256(data).hexdigest()}


def lt_config(name_or_config) -> LongTailListConfig:
  """A family member by name ("imagenet_lt", "places_lt", "inat18") or as given."""
  if isinstance(name_or_config, LongTailListConfig):
    return name_or_config
  by_name = {c.name: c for c in FAMILY}
  if name_or_config not in by_name:
    raise ValueError(f"Unknown list dataset {name_or_config!r}; expected one of "
                     f"{sorted(by_name)} or a LongTailListConfig.")
  return by_name[name_or_config]


def prepare_lt_lists(name_or_config, *, image_root, list_dir=None, data_dir=None,
                     verify: bool = True):
  """Prepares (once) a list dataset as ArrayRecord shards under `data_dir` and returns its builder.

  Args:
    name_or_config: "imagenet_lt", "places_lt", "inat18" or a `LongTailListConfig`.
    image_root: the folder the list paths are relative to (TFDS's `manual_dir`).
    list_dir: the folder of the list files (default: `image_root`).
    data_dir: where prepared datasets live (default `ltjax.data.default_data_dir()`).
    verify: check lists named like the published ones against their SHA-256.
  """
  config = lt_config(name_or_config)
  data_dir = pathlib.Path(data_dir or _sources.default_data_dir()).expanduser()
  builder = LtLists(config=config, data_dir=str(data_dir), file_format="array_record")
  builder.list_dir = None if list_dir is None else str(list_dir)
  builder.verify_published = verify
  if not builder.is_prepared():
    if not pathlib.Path(image_root).expanduser().is_dir():  # TFDS would raise AssertionError
      raise FileNotFoundError(
          f"{config.name} is not prepared under {data_dir} and its image root {image_root} does "
          f"not exist. {LtLists.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    download_config = tfds.download.DownloadConfig(manual_dir=str(image_root),
                                                   try_download_gcs=False)
    builder.download_and_prepare(download_config=download_config)
  return builder


def lt_lists_source(builder, split: str):
  """`(source, labels)`: the prepared split as a random-access source of records whose "image" is
  the encoded bytes (the input pipeline decodes them), and the labels i64[N] in record order, read
  from the metadata (the list), not from the records."""
  source = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
  labels = np.asarray(builder.info.metadata[split]["labels"], np.int64)
  if labels.size != len(source):
    raise ValueError(f"{builder.name}[{split}]: {len(source)} records but {labels.size} labels "
                     "in the metadata; prepare it again.")
  return source, labels
