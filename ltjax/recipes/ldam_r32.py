"""LDAM-DRW's CIFAR recipe (kaidic/LDAM-DRW `cifar_train.py`, docs/methods.md §3).

ResNet-32 (He), batch 128 with the last partial batch kept (97 steps per epoch on CIFAR-10-LT
IR 100), 200 epochs, SGD momentum 0.9, weight decay 2e-4 (coupled, all params), lr 0.1 with a
5-epoch linear warm-up, x0.01 after epoch 160 and x1e-4 after 180, DRW from epoch 160 (0-based),
random crop (pad 4) + horizontal flip. Default method `ldam_drw`; any joint method
runs on this recipe with `--config.method=...`.

Usage: ltjax-train --config=ldam_r32 \
  --config.dataset=cifar10 --config.imbalance_ratio=100 --workdir=/tmp/ldam
"""
from ltjax.recipes import common


def get_config():
  c = common.base_config()
  c.recipe = "ldam_r32"
  c.method = "ldam_drw"
  c.dataset = "cifar10"
  c.num_epochs = 200
  c.batch_size = 128
  c.keep_last_batch = True  # DataLoader(drop_last=False): 97 steps on CIFAR-10-LT IR 100
  c.model = "resnet32"
  c.model_kwargs = {"blocks_per_stage": 5, "widths": (16, 32, 64)}
  c.head_init = "kaiming"
  c.weight_decay = 2e-4
  c.lr = {"name": "ldam", "base_lr": 0.1, "warmup_epochs": 5, "decay_epochs": (160, 180),
          "decay": 0.01}
  c.hparams.drw_start_epoch = 160
  c.hparams.cb_beta = 0.9999
  c.hparams.ldam_max_margin = 0.5
  c.hparams.scale = 30.0
  c.augment = "crop_flip"
  return c
