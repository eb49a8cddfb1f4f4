"""ImageNet-LT, ResNet-50, ALA (ALA §4.2; Liu et al. 2019's split lists).

| setting | value | source |
|---|---|---|
| data | ImageNet_LT_{train,val,test}.txt (115,846 / 20,000 / 50,000 images, 1,000 classes) | OLTR lists (classifier-balancing data/) |
| model | torchvision ResNet-50, cosine head (ALA's normalised classifier), random init | ALA §4.2 |
| batch / lr / wd | 256 / 0.1 / 5e-4, SGD momentum 0.9 | ALA §4.2 (the issue's summary of it) |
| epochs | 90 | ALA §4.2 |
| lr schedule | warm-up 5 epochs, x0.1 after epochs 60 and 80 | LDAM-DRW strategy as in OpenLT's ImageNet-LT ALA config (RX50_ALA.json: warm-up 5, steps 60/80); **inferred** for 90 epochs |
| DRW | CB weights (beta 0.9999) from epoch 60 | LDAM-DRW: re-weighting starts at the first decay; **inferred** |
| ALA | s = 30, quantity factor as in the paper | ALA §3 (docs/methods.md §2.13) |
| input | RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4, hue 0); eval resize 256 + centre crop 224 | classifier-balancing data/dataloader.py (train transform of every dataset but iNaturalist18); OpenLT ImageNetLTDataLoader the same |
| seed | 0 (the papers state none) | — |

Other methods of the registry run with `--config.method=...`: GALA's own ImageNet-LT numbers come
from a decoupled classifier stage (lt-project config/ImageNet_LT/softmax_resnet50.yaml: fixed
features, 10 epochs, batch 128, lr 0.2, wd 5e-4, cosine; PRS tau 1.7 from its README), set here as
`hparams.prs_tau = 1.7`; LOS reports ImageNet-LT in its paper only (no official config).
Other global batch sizes scale the lr linearly (experiments/configs/large_scale.py).
"""
from experiments.configs import large_scale


def get_config():
  c = large_scale.base_config(dataset="imagenet_lt", model="resnet50", num_classes=1000)
  c.recipe = "imagenet_lt_r50"
  c.num_epochs = 90
  c.batch_size = 256
  c.reference_batch_size = 256
  c.weight_decay = 5e-4
  large_scale.ldam_drw_schedule(c, base_lr=0.1, first_decay=60, second_decay=80)
  c.hparams.prs_tau = 1.7
  c.color_jitter = (0.4, 0.4, 0.4)
  return c
