"""iNaturalist 2018, ResNet-50, ALA, with OpenLT's iNaturalist recipe (the decoupling code's lists).

OpenLT (the only ALA code) has no iNat ALA config; its iNaturalist recipe is liming-ai/OpenLT
@33fa2a9 configs/iNaturalist18/config_iNaturalist_resnet50_ldam.json (LDAM-DRW), whose optimizer,
schedule and re-weighting its ImageNet-LT ALA config RX50_ALA.json shares. Checked setting by
setting in tests/test_recipe_settings.py:

| setting | value | source |
|---|---|---|
| data | iNaturalist18_train.txt (437,513 images, 8,142 classes, 1,000 .. 2 per class); test = iNaturalist18_val.txt (24,426, 3 per class) | classifier-balancing data/ |
| model | torchvision ResNet-50, cosine head, random init | **deviation**: the config's `reduce_dimension: true` narrows layer3/layer4 to 192/384 channels (RIDE's network, whose code OpenLT inherits); ltjax keeps the standard ResNet-50 of the ALA and decoupling tables |
| batch / lr / wd | 256 / 0.1 / 2e-4, SGD momentum 0.9, **Nesterov** | config data_loader, optimizer |
| epochs, lr schedule | 100; `CustomLR` warm-up 5, x0.1 from epoch 60, x0.01 from 80 | config trainer, lr_scheduler; OpenLT train.py |
| DRW | `reweight_epoch: 160`: never on in 100 epochs (`drw_start_epoch = 160`) | config loss |
| ALA | s = 30, quantity factor `"openlt"` | OpenLT model/loss.py ALALoss (in place of the config's LDAMLoss) |
| input | RandomResizedCrop(224) + flip, no colour jitter; eval resize 256 + centre crop 224 | OpenLT data_loader/inaturalist_data_loaders.py (as classifier-balancing's iNaturalist18 transform) |
| normalisation | mean (0.466, 0.471, 0.380), std (0.195, 0.194, 0.192) of x / 255 | inaturalist_data_loaders.py; classifier-balancing RGB_statistics["iNaturalist18"] |
| seed | 0 | — |

GALA's iNat numbers (lt-project config/iNaturalist18/softmax.yaml: decoupled, fixed features, 30
epochs, batch 512, lr 0.2, wd 1e-4, class-aware sampler, cosine; PRS tau 1.5) differ; the PRS tau
is set here. No separate validation list: the list's val split is the test split, as in the code.
"""
from ltjax.recipes import large_scale


def get_config():
  c = large_scale.base_config(dataset="inat18", model="resnet50", num_classes=8142)
  c.recipe = "inat18_r50"
  c.num_epochs = 100
  c.batch_size = 256
  c.reference_batch_size = 256
  c.weight_decay = 2e-4
  c.nesterov = True
  large_scale.ldam_drw_schedule(c, base_lr=0.1, first_decay=60, second_decay=80)
  c.hparams.drw_start_epoch = 160  # OpenLT's reweight_epoch: past the last epoch
  c.hparams.ala_quantity_factor = "openlt"
  c.hparams.prs_tau = 1.5
  c.mean, c.std = large_scale.INAT18_MEAN, large_scale.INAT18_STD
  return c
