"""A quick CPU recipe: a small CNN on Fashion-MNIST-LT (minutes on 2 CPU cores).

Not a paper recipe: batch 128, SGD momentum 0.9, weight decay 5e-4, lr 0.05 cosine-annealed per
epoch, no augmentation. Default method `ce`; compare with `--config.method=la_loss`.
"""
from experiments.configs import common


def get_config():
  c = common.base_config()
  c.recipe = "fmnist_cnn"
  c.method = "ce"
  c.dataset = "fashion_mnist"
  c.imbalance_ratio = 100.0
  c.num_epochs = 8
  c.batch_size = 128
  c.model = "small_cnn"
  c.model_kwargs = {"widths": (32, 64), "features": 128}
  c.head_init = "torch"
  c.weight_decay = 5e-4
  c.lr = {"name": "cosine", "base_lr": 0.05}
  c.augment = "none"
  c.val_per_class = 50
  c.checkpoint_every_epochs = 2
  return c
