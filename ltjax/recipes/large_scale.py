"""What the ImageNet-LT / iNaturalist 2018 / Places-LT recipes share, and the linear lr scaling.

The four recipes (`imagenet_lt_r50`, `imagenet_lt_rx50`, `inat18_r50`, `places_lt_r152`) train ALA
(Zhao et al., AAAI 2022). Its authors published no code; the only ALA code, liming-ai/OpenLT,
fixes the first three (its ImageNet-LT ALA configs and its iNaturalist recipe: Nesterov SGD,
cosine over 180 epochs for ResNet-50, warm-up 5 and steps at 60 / 80 over 100 epochs otherwise,
DRW never reached). Places-LT has no OpenLT config and takes the LDAM-DRW strategy ALA names
(warm-up 5, two x0.1 steps, DRW from the first). Each recipe states its numbers and their
sources; tests/test_recipe_settings.py checks them against the official files.

Learning rate and global batch size. The papers' learning rates belong to their batch sizes
(`reference_batch_size`). A run with another global batch B (e.g. a TPU pod slice) scales every
learning rate of `config.lr` (`base_lr`, `warmup_lr`) linearly, lr = lr_ref * B / B_ref (Goyal et
al. 2017), through `scaled_lr`; the warm-up keeps its length in epochs. B = B_ref gives the papers'
numbers exactly. Set `reference_batch_size = 0` to switch the scaling off.
"""
import ml_collections

from ltjax.recipes import common

# ImageNet statistics of x / 255 (torchvision's Normalize for ImageNet-pre-trained ResNets).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# iNaturalist 2018's own statistics, as the decoupling code normalises it (classifier-balancing
# data/dataloader.py RGB_statistics["iNaturalist18"]; OpenLT and PaCo use the same numbers).
INAT18_MEAN = (0.466, 0.471, 0.380)
INAT18_STD = (0.195, 0.194, 0.192)


def base_config(*, dataset: str, model: str, num_classes: int) -> ml_collections.ConfigDict:
  """The shared skeleton of the list-defined (large) recipes."""
  c = common.base_config()
  c.method = "ala"
  c.dataset = dataset  # a member of the `lt_lists` TFDS family (ltjax.data.prepare_lt_lists)
  c.num_classes = num_classes
  # A list fixes the split: no subsampling ratio, protocol or seed applies; the split fingerprint
  # is the list's SHA-256. The validation split is the family's own list (val_per_class unused).
  c.imbalance_ratio = 1.0
  c.split_protocol = "list"
  c.val_per_class = 0
  # Where the images are (the folder the list paths are relative to) and the list files
  # ("" = the image root), for preparing the dataset (experiments.prepare_data).
  c.image_root = ""
  c.list_dir = ""
  c.model = model
  c.model_kwargs = ml_collections.ConfigDict()
  c.head_init = "torch"
  c.momentum = 0.9
  c.nesterov = False
  # The lr of config.lr is for this global batch; other batch sizes scale it (see module doc).
  c.reference_batch_size = 256
  # Input: RandomResizedCrop(image_size) + flip for training, resize(image_size * 256 / 224) +
  # centre crop for evaluation, ImageNet normalisation.
  c.image_size = 224
  c.augment = "random_resized_crop_flip"
  # torchvision ColorJitter(brightness, contrast, saturation, hue=0) strengths after the flip
  # (ltjax.data.color_jitter); zeros = none. Each recipe states its own.
  c.color_jitter = (0.0, 0.0, 0.0)
  c.mean = IMAGENET_MEAN
  c.std = IMAGENET_STD
  c.eval_batch_size = 512  # a multiple of the device count (streamed evaluation shards it)
  # Grain worker processes decoding and augmenting (0: threads of the training process). Set it
  # to the host's spare cores (experiments/results/bench_decode.md: ~500 images/s per core).
  c.data_workers = 0
  # Evaluated (streamed validation and test lists) after the last epoch only: ~70,000 images.
  c.eval_every_epochs = 0
  # Smoke tests: at most this many steps per epoch (0: the whole epoch).
  c.max_steps_per_epoch = 0
  # Generated test lists share the published lists' names; False skips their SHA-256 check.
  c.verify_lists = True
  # bf16 convolutions and activations with float32 parameters, optimizer state, BatchNorm
  # statistics, logits and loss state. None = on for accelerators, off on CPU.
  c.mixed_precision = ml_collections.config_dict.placeholder(bool)  # pyright: ignore[reportAttributeAccessIssue]
  # The list datasets exist only as encoded records and always stream ("device" is refused).
  c.pipeline = "auto"
  # A torchvision-layout state dict (.npz of name -> array) to start the backbone from ("" =
  # random init); the fc layer is not loaded (the class count differs).
  c.init_weights = ""
  c.checkpoint_every_epochs = 1
  return c


def ldam_drw_schedule(c: ml_collections.ConfigDict, *, base_lr: float, first_decay: int,
                      second_decay: int) -> None:
  """LDAM-DRW's step schedule at ImageNet scale: 5 warm-up epochs, x0.1 after `first_decay` and
  again after `second_decay` epochs (1-based, as `ltjax.train.ldam_epoch_lr`), DRW from the first
  decay on (0-based epoch `first_decay`)."""
  c.lr = {"name": "ldam", "base_lr": base_lr, "warmup_epochs": 5,
          "decay_epochs": (first_decay, second_decay), "decay": 0.1}
  c.hparams.drw_start_epoch = first_decay
  c.hparams.cb_beta = 0.9999


def scaled_lr(lr: dict, *, batch_size: int, reference_batch_size: int) -> dict:
  """`lr` with every learning rate (`base_lr`, `warmup_lr`) times `batch_size /
  reference_batch_size`; unchanged when `reference_batch_size` is 0."""
  if reference_batch_size < 0 or batch_size <= 0:
    raise ValueError(f"Need batch_size > 0 and reference_batch_size >= 0, got {batch_size}, "
                     f"{reference_batch_size}.")
  if reference_batch_size == 0:
    return dict(lr)
  factor = batch_size / reference_batch_size
  return {k: (v * factor if k in ("base_lr", "warmup_lr") else v) for k, v in dict(lr).items()}
