"""Places-LT, ResNet-152 pre-trained on ImageNet, ALA (OLTR's lists and protocol).

No ALA code exists for Places-LT (OpenLT has no Places config), so this recipe is assembled from
the decoupling code's Places-LT config (facebookresearch/classifier-balancing @f162ade
config/Places_LT/cls_crt.yaml) and the LDAM-DRW strategy; checked setting by setting in
tests/test_recipe_settings.py:

| setting | value | source |
|---|---|---|
| data | Places_LT_{train,val,test}.txt (62,500 / 7,300 / 36,500 images, 365 classes, 4,980 .. 5 per class) | OLTR lists (classifier-balancing data/) |
| model | torchvision ResNet-152 from torchvision's ImageNet weights (`config.init_weights`, a torchvision state dict as .npz), new 365-way cosine head | OLTR / decoupling start from an ImageNet ResNet-152 (`models/ResNet152Feature.py`; OLTR's weights are a Caffe ResNet-152 converted to PyTorch, **not** torchvision's) |
| epochs | 30 | OLTR's Places-LT stage 1 (30 epochs); cls_crt.yaml re-trains for 10 |
| batch / wd | 256 / 5e-4, SGD momentum 0.9, no Nesterov | cls_crt.yaml batch_size, optim_params |
| lr | 0.01 for every parameter | **deviation**: cls_crt.yaml's 0.01 is its feature model's lr, and that backbone is frozen there (`fix: true`); the classifier it trains takes 0.1. ltjax has one lr per run, and 0.01 is the rate for fine-tuning the pre-trained backbone, which this joint recipe trains |
| lr schedule, DRW | warm-up 5, x0.1 after epochs 20 and 25; DRW (beta 0.9999) from epoch 20 | LDAM-DRW strategy (ALA trains with it) scaled to 30 epochs; **inferred** |
| ALA | s = 30, the paper's quantity factor (`"paper"`, no OpenLT config to follow) | ALA §3 |
| input | RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4, hue 0); eval resize 256 + centre crop 224 | classifier-balancing data/dataloader.py (train transform of every dataset but iNaturalist18) |
| seed | 0 | — |

GALA's Places-LT number uses PRS tau 1.4 (README), set here. Other batch sizes scale the lr
linearly (ltjax/recipes/large_scale.py).
"""
from ltjax.recipes import large_scale


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
