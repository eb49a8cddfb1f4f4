"""LOS's CIFAR-100-LT recipe (Thinklab-SJTU/LOS, docs/methods.md §2.12, §3).

Stage 1 (`--config.method=ce`, the default): ResNet-34 (CIFAR stem), CE, SGD lr 0.01, momentum
0.9, weight decay 5e-3, batch 64 (last partial batch kept), 200 epochs, cosine to 0 stepped per
epoch, crop + flip, the first n_c images of each class (`split_protocol="first"`).
Stage 2 (`--config.method=los --config.init_checkpoint=<stage-1 workdir>`, use
`--config=los_r34:stage2`, i.e. 20 epochs, weight decay 0, lr 5e-4):
only the fc head is trained (optax.multi_transform freezes the backbone), label over-smoothing
delta = 0.98, BN in train mode as the official code (`--config.stage2_bn_train=False` for eval
mode). Evaluation averages the logits of x and its flip, as LOS's `valid_base(test_aug=True)`.
"""
from ltjax.recipes import common


def get_config(stage: str = "stage1"):
  c = common.base_config()
  c.recipe = "los_r34"
  c.method = "ce"
  c.dataset = "cifar100"
  # LOS's Cifar100LT keeps the first n_c images of each class in file order (its shuffle is
  # commented out), docs/methods.md §1.1.
  c.split_protocol = "first"
  c.num_epochs = 200
  c.batch_size = 64
  c.keep_last_batch = True  # DataLoader(drop_last=False) in both stages
  c.model = "resnet34"
  c.model_kwargs = {"stage_sizes": (3, 4, 6, 3), "widths": (64, 128, 256, 512)}
  c.head_init = "torch"
  c.weight_decay = 5e-3
  c.lr = {"name": "cosine", "base_lr": 0.01}
  c.hparams.los_delta = 0.98
  c.augment = "crop_flip"
  c.flip_tta = True
  if stage == "stage2":
    c.method = "los"
    c.num_epochs = 20
    c.weight_decay = 0.0
    c.lr = {"name": "cosine", "base_lr": 5e-4}
  elif stage != "stage1":
    raise ValueError(f"los_r34 takes 'stage1' or 'stage2', got {stage!r}.")
  return c
