"""Keys every recipe has, with the defaults the recipes override."""
import ml_collections

from ltjax.train import DEFAULT_HPARAMS


def base_config() -> ml_collections.ConfigDict:
  """The shared skeleton of every recipe (see the recipe files for the values they set)."""
  c = ml_collections.ConfigDict()
  c.recipe = ""
  # The keys design.md fixes for every recipe.
  c.method = "ce"
  c.dataset = "cifar10"
  c.imbalance_ratio = 100.0
  c.split_protocol = "ldam"
  c.num_epochs = 200
  c.batch_size = 128
  # Train on the epoch's last, partial batch (N % B examples, a second compiled step) as PyTorch's
  # `DataLoader(drop_last=False)` does (LDAM-DRW, LOS); False drops it (GALA's int(N / B) steps).
  c.keep_last_batch = False
  c.seed = 0
  # The subset a long-tailed split keeps is drawn with its own seed, fixed across training seeds
  # as in LDAM-DRW (`rand_number=0`), so that seeds vary the initialisation and data order over
  # one split (one fingerprint per table row). Set it to vary the split too.
  c.split_seed = 0
  # Prepared TFDS datasets ("" = $LTJAX_DATA_DIR or ~/tensorflow_datasets) and the raw archives
  # to prepare them from offline ("" = the checkout's shared copy, ltjax/cli/shared_data.py,
  # when it has the dataset).
  c.data_dir = ""
  c.manual_dir = ""
  # Validation images per class, carved from the training images the long-tailed subsampling
  # discarded (0: no validation split).
  c.val_per_class = 20
  # Model.
  c.model = "resnet32"
  c.model_kwargs = ml_collections.ConfigDict()
  c.head_init = "torch"  # "kaiming" for LDAM-DRW's re-initialised nn.Linear
  # Optimizer: PyTorch SGD with coupled weight decay; the lr schedule is stepped per epoch.
  c.momentum = 0.9
  c.weight_decay = 2e-4
  c.nesterov = False
  c.lr = ml_collections.ConfigDict({"name": "ldam", "base_lr": 0.1})
  # Method hyperparameters (all of ltjax.train.DEFAULT_HPARAMS, so that any can be overridden
  # from the command line, e.g. --config.hparams.tau=1.5).
  c.hparams = ml_collections.ConfigDict(dict(DEFAULT_HPARAMS))
  # Input pipeline.
  c.augment = "crop_flip"
  # "auto": the training images on the device when they fit in its memory, else streamed from
  # the host (ltjax.cli.streaming.choose_pipeline); "device" / "streaming" force one.
  c.pipeline = "auto"
  c.eval_batch_size = 500
  c.flip_tta = False
  # Decoupled stage 2 / post-hoc: the workdir of the finished stage-1 run.
  c.init_checkpoint = ""
  c.stage2_bn_train = True  # the official cRT/LOS code calls model.train() in stage 2
  c.checkpoint_every_epochs = 10
  # Evaluate validation and test every this many epochs (and always the last) into the per-epoch
  # record (metrics.jsonl, TensorBoard, results.json "per_epoch"); 0: the last epoch only. The
  # per-epoch test numbers feed only the best-epoch-on-test column (the official codes'
  # protocol), never a selection.
  c.eval_every_epochs = 1
  return c
