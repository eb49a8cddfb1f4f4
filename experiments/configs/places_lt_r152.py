"""Places-LT, ResNet-152 pre-trained on ImageNet, ALA (ALA §4.2; OLTR's lists and protocol).

| setting | value | source |
|---|---|---|
| data | Places_LT_{train,val,test}.txt (62,500 / 7,300 / 36,500 images, 365 classes, 4,980 .. 5 per class) | OLTR lists (classifier-balancing data/) |
| model | torchvision ResNet-152 from ImageNet weights (`config.init_weights`, a torchvision state dict as .npz), new 365-way cosine head | ALA §4.2, OLTR |
| epochs | 30 | ALA §4.2 |
| batch / lr / wd | 256 / 0.01 / 5e-4, SGD momentum 0.9 | the decoupling code's Places-LT backbone settings (config/Places_LT/cls_crt.yaml feat_model: lr 0.01, wd 5e-4, batch 256); ALA's own values were not readable here: **inferred** |
| lr schedule, DRW | warm-up 5, x0.1 after epochs 20 and 25; DRW (beta 0.9999) from epoch 20 | LDAM-DRW strategy scaled to 30 epochs; **inferred** |
| input | RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4, hue 0); eval resize 256 + centre crop 224 | classifier-balancing data/dataloader.py (train transform of every dataset but iNaturalist18) |
| seed | 0 | — |

GALA's Places-LT number uses PRS tau 1.4 (README), set here. Other batch sizes scale the lr
linearly (experiments/configs/large_scale.py).
"""
from experiments.configs import large_scale


def get_config():
  c = large_scale.base_config(dataset="places_lt", model="resnet152", num_classes=365)
  c.recipe = "places_lt_r152"
  c.num_epochs = 30
  c.batch_size = 256
  c.reference_batch_size = 256
  c.weight_decay = 5e-4
  large_scale.ldam_drw_schedule(c, base_lr=0.01, first_decay=20, second_decay=25)
  c.hparams.prs_tau = 1.4
  c.init_weights = "resnet152_imagenet.npz"
  c.color_jitter = (0.4, 0.4, 0.4)
  return c
