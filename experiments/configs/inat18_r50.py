"""iNaturalist 2018, ResNet-50, ALA (ALA §4.2; the decoupling code's train / val lists).

| setting | value | source |
|---|---|---|
| data | iNaturalist18_train.txt (437,513 images, 8,142 classes, 1,000 .. 2 per class); test = iNaturalist18_val.txt (24,426, 3 per class) | classifier-balancing data/ |
| model | torchvision ResNet-50, cosine head, random init | ALA §4.2 |
| batch / lr / wd | 512 / 0.2 / 2e-4, SGD momentum 0.9 | ALA §4.2 (the issue's summary of it) |
| epochs | 90 | ALA §4.2 |
| lr schedule, DRW | warm-up 5, x0.1 after 60 and 80; DRW (beta 0.9999) from epoch 60 | LDAM-DRW strategy; **inferred** as for ImageNet-LT |
| input | RandomResizedCrop(224) + flip, no colour jitter; eval resize 256 + centre crop 224 | classifier-balancing data/dataloader.py (its iNaturalist18 train transform has no ColorJitter); OpenLT iNaturalistDataLoader the same |
| normalisation | mean (0.466, 0.471, 0.380), std (0.195, 0.194, 0.192) of x / 255, not ImageNet's | classifier-balancing data/dataloader.py RGB_statistics["iNaturalist18"] |
| seed | 0 | — |

GALA's iNat numbers (lt-project config/iNaturalist18/softmax.yaml: decoupled, fixed features, 30
epochs, batch 512, lr 0.2, wd 1e-4, class-aware sampler, cosine; PRS tau 1.5) differ; the PRS tau
is set here. No separate validation list: the list's val split is the test split, as in the code.
"""
from experiments.configs import large_scale


def get_config():
  c = large_scale.base_config(dataset="inat18", model="resnet50", num_classes=8142)
  c.recipe = "inat18_r50"
  c.num_epochs = 90
  c.batch_size = 512
  c.reference_batch_size = 512
  c.weight_decay = 2e-4
  large_scale.ldam_drw_schedule(c, base_lr=0.2, first_decay=60, second_decay=80)
  c.hparams.prs_tau = 1.5
  c.mean, c.std = large_scale.INAT18_MEAN, large_scale.INAT18_STD
  return c
