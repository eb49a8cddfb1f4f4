"""GALA's CIFAR-100-LT recipe (lt-project `config/CIFAR100_LT/gala_imba100.yaml`, docs/methods.md
§2.10, §3).

ResNet-32 (He) + a linear head with PyTorch default init, batch 64, 200 epochs (floor(N/64)
steps each), SGD momentum 0.9, weight decay 5e-4 (coupled, all params), `CosineAnnealingLRWarmup`
(0.05, then 0.1, cosine to 0 at the last epoch) stepped at each epoch start, GALA margins with
lam1 = lam2 = 1 in the official code's mode. `gala_prs` adds prediction re-balancing (tau = 1).

Augmentation as the official transform list: RandomCrop(32, 4), flip, AutoAugment's CIFAR10Policy,
Cutout(1, 16), then Normalize (on device, `ltjax.data.augment(..., autoaugment=True)`).
Selection: the official code keeps the best epoch on the test set; ltjax reports the last epoch.
"""
from ltjax.recipes import common


def get_config():
  c = common.base_config()
  c.recipe = "gala_r32"
  c.method = "gala"
  c.dataset = "cifar100"  # config/CIFAR100_LT/gala_imba100.yaml
  c.num_epochs = 200
  c.batch_size = 64
  c.keep_last_batch = False  # run_networks.py breaks at int(N / 64) steps
  c.model = "resnet32"
  c.model_kwargs = {"blocks_per_stage": 5, "widths": (16, 32, 64)}
  c.head_init = "torch"
  c.weight_decay = 5e-4
  c.lr = {"name": "gala", "base_lr": 0.05, "warmup_lr": 0.1, "warmup_epochs": 2}
  c.hparams.gala_lam1 = 1.0
  c.hparams.gala_lam2 = 1.0
  c.hparams.gala_mode = "code"
  c.hparams.prs_tau = 1.0
  c.augment = "crop_flip_autoaugment_cutout"
  return c
