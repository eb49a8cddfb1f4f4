"""ImageNet-LT, ResNeXt-50 (32x4d), ALA (ALA §4.2).

Identical to `imagenet_lt_r50` (see its table for every setting and source) except the backbone,
torchvision's `resnext50_32x4d`, the network of ALA's and the decoupling paper's ImageNet-LT tables:

| setting | value | source |
|---|---|---|
| model | torchvision ResNeXt-50 32x4d, cosine head, random init | ALA §4.2 |
| batch / lr / wd / epochs | 256 / 0.1 / 5e-4 / 90 | ALA §4.2 |
| lr schedule, DRW | warm-up 5, x0.1 after 60 and 80; DRW from 60 | LDAM-DRW strategy (OpenLT RX50_ALA.json steps 60/80, warm-up 5); **inferred** for 90 epochs |

GALA (decoupled stage on ResNeXt-50 features, lt-project config/ImageNet_LT/decoupled_resnext50.yaml:
batch 512, lr 0.12, wd 5e-4) and LOS (paper only) differ as noted in `imagenet_lt_r50`.
"""
from experiments.configs import imagenet_lt_r50


def get_config():
  c = imagenet_lt_r50.get_config()
  c.recipe = "imagenet_lt_rx50"
  c.model = "resnext50_32x4d"
  return c
