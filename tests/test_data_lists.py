"""List-defined splits: the real Places-LT / ImageNet-LT / iNat lists, and the `lt_lists` TFDS
builder end to end on generated JPEGs."""
import hashlib
import io
import pathlib

import numpy as np
import pytest
from PIL import Image

from experiments import shared_data
from ltjax import data
from ltjax.data import _tfds_lt

LISTS = shared_data.shared_data_dir() / "lt-lists"
needs_lists = pytest.mark.skipif(not LISTS.is_dir(), reason="shared lt-lists not present")


@needs_lists
def test_places_lt_train_list_has_the_published_profile():
  split = data.read_list(LISTS / "Places_LT_train.txt")
  assert split.num_classes == 365 and len(split) == 62_500
  assert split.class_counts.max() == 4_980 and split.class_counts.min() == 5
  groups = data.shot_groups(split.class_counts)
  assert [int(groups[g].sum()) for g in ("many", "medium", "few")] == [131, 163, 71]
  # The canonical-line fingerprint is the published file's SHA-256.
  assert split.fingerprint == "726c4871dcbf07ce2f857703bfe32e9a83ffbf52d704239f6d95c4f4f4c247f7"
  assert split.summary()["num_few"] == 71


@needs_lists
@pytest.mark.parametrize("name,classes,per_class", [
    ("Places_LT_val.txt", 365, 20), ("Places_LT_test.txt", 365, 100),
    ("ImageNet_LT_val.txt", 1000, 20), ("ImageNet_LT_test.txt", 1000, 50)])
def test_evaluation_lists_are_balanced(name, classes, per_class):
  split = data.read_list(LISTS / name)
  assert split.num_classes == classes
  np.testing.assert_array_equal(split.class_counts, per_class)
  assert split.fingerprint == hashlib.sha256((LISTS / name).read_bytes()).hexdigest()


@needs_lists
def test_places_lt_train_and_val_are_disjoint():
  train = data.read_list(LISTS / "Places_LT_train.txt")
  val = data.read_list(LISTS / "Places_LT_val.txt")
  assert not set(train.paths) & set(val.paths)


def test_parse_list_errors_name_the_line():
  with pytest.raises(ValueError, match=r"x.txt:2: expected"):
    data.parse_list(["a.jpg 0", "b.jpg"], source="x.txt")
  with pytest.raises(ValueError, match="listed twice"):
    data.parse_list(["a.jpg 0", "a.jpg 1"])
  with pytest.raises(ValueError, match="relative"):
    data.parse_list(["../a.jpg 0"])
  with pytest.raises(ValueError, match="outside"):
    data.parse_list(["a.jpg 3"], num_classes=3)
  split = data.parse_list(["a.jpg 2", "", "b.jpg 2"], num_classes=4)
  np.testing.assert_array_equal(split.class_counts, [0, 0, 2, 0])


def test_shot_groups_put_the_boundaries_in_medium():
  groups = data.shot_groups([101, 100, 20, 19])
  assert groups["many"].tolist() == [True, False, False, False]
  assert groups["medium"].tolist() == [False, True, True, False]
  assert groups["few"].tolist() == [False, False, False, True]


def write_jpeg_list(root: pathlib.Path, list_name: str, entries, rng, *, sizes: tuple):
  """Writes a random JPEG (quality 90, height and width drawn from `range(*sizes)`) at each
  `(relative path, class)` of `entries` under `root`, and the list file `root / list_name`."""
  lines = []
  for rel, c in entries:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (int(rng.integers(*sizes)), int(rng.integers(*sizes)), 3))
    Image.fromarray(pixels.astype(np.uint8)).save(root / rel, quality=90)
    lines.append(f"{rel} {c}")
  (root / list_name).write_text("\n".join(lines) + "\n")


def _write_tiny_family(root: pathlib.Path, counts: dict, seed=0):
  rng = np.random.default_rng(seed)
  for split, per_class in counts.items():
    lines = []
    for c, n in enumerate(per_class):
      for i in range(n):
        rel = f"{split}/class{c:02d}/{i:04d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shape = (int(rng.integers(30, 60)), int(rng.integers(30, 60)), 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / rel, quality=90)
        lines.append(f"{rel} {c}")
    rng.shuffle(lines)  # list order is not class order; records must keep it anyway
    (root / f"Tiny_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.slow
def test_builder_prepares_array_record_shards_in_list_order(tmp_path):
  pytest.importorskip("tensorflow")

  root = tmp_path / "images"
  _write_tiny_family(root, {"train": [6, 3, 1], "test": [2, 2, 2]})
  config = _tfds_lt.LongTailListConfig(name="tiny", num_classes=3,
                                       lists={"train": "Tiny_train.txt", "test": "Tiny_test.txt"})
  builder = data.prepare_lt_lists(config, image_root=root, data_dir=tmp_path / "tfds")
  shards = sorted(p.name for p in (tmp_path / "tfds").rglob("*.array_record*"))
  assert shards and all("array_record" in s for s in shards)
  listed = data.read_list(root / "Tiny_train.txt")
  source, labels = data.lt_lists_source(builder, "train")
  np.testing.assert_array_equal(labels, listed.labels)
  meta = builder.info.metadata["train"]
  assert meta["split_fingerprint"] == listed.fingerprint
  assert meta["class_counts"] == [6, 3, 1]
  assert meta["list_sha256"] == hashlib.sha256((root / "Tiny_train.txt").read_bytes()).hexdigest()
  for i in range(len(source)):
    record = source[i]
    raw = (root / listed.paths[i]).read_bytes()
    assert record["index"] == i and record["label"] == listed.labels[i]
    assert record["image"] == raw  # the original bytes, not re-encoded
    assert (record["sha256"].decode() if isinstance(record["sha256"], bytes)
            else record["sha256"]) == hashlib.sha256(raw).hexdigest()
    assert Image.open(io.BytesIO(record["image"])).size == Image.open(root / listed.paths[i]).size
  # A second call reuses the prepared shards.
  again = data.prepare_lt_lists(config, image_root=root / "absent", data_dir=tmp_path / "tfds")
  assert len(again.as_data_source("test")) == 6


def test_builder_refuses_a_list_that_differs_from_the_published_one(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  (tmp_path / "Places_LT_val.txt").write_text("val/a.jpg 0\n")
  config = _tfds_lt.lt_config("places_lt")
  assert config.num_classes == 365 and config.lists["test"] == "Places_LT_test.txt"
  with pytest.raises(ValueError, match="published"):
    _tfds_lt.read_config_lists(_tfds_lt.LongTailListConfig(
        name="x", num_classes=365, lists={"validation": "Places_LT_val.txt"}), tmp_path)
