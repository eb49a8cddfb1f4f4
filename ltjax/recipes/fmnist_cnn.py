"""A quick CPU recipe: a small CNN on Fashion-MNIST-LT (about 1-2 minutes per run on 2 CPU cores).

Not a paper recipe, but the papers' optimizer: batch 128, SGD momentum 0.9 with coupled weight
decay 5e-4 (PyTorch's `SGD`, as LDAM-DRW, the LA paper and GALA train), lr 0.05 cosine-annealed
per epoch over 5 epochs, no augmentation. The CNN flattens its 7x7x64 map into the dense layer
(averaging it away cost ~15 points of balanced accuracy at 8 epochs). Default method `ce`;
compare with `--config.method=la_loss`.
"""
from ltjax.recipes import common


def get_config():
  c = common.base_config()
  c.recipe = "fmnist_cnn"
  c.method = "ce"
  c.dataset = "fashion_mnist"
  c.imbalance_ratio = 100.0
  c.num_epochs = 5
  c.batch_size = 128
  c.model = "small_cnn"
  c.model_kwargs = {"widths": (32, 64), "features": 128, "pool": "flatten"}
  c.head_init = "torch"
  c.weight_decay = 5e-4
  c.lr = {"name": "cosine", "base_lr": 0.05}
  c.augment = "none"
  c.val_per_class = 50
  c.checkpoint_every_epochs = 5  # the last epoch only: a run takes a minute or two
  return c
