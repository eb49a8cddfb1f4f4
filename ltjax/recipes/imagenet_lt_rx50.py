"""ImageNet-LT, ResNeXt-50 (32x4d), ALA, as OpenLT's ALA config for this network.

Every setting is liming-ai/OpenLT @33fa2a9 configs/ImageNet-LT/RX50_ALA.json (with train.py's
`CustomLR`, trainer/trainer.py, model/loss.py ALALoss), checked in tests/test_recipe_settings.py:

| setting | value | source |
|---|---|---|
| data, input, seed | as `imagenet_lt_r50` | OpenLT imagenet_lt_data_loaders.py |
| model | torchvision ResNeXt-50 32x4d, cosine head, random init | RX50_ALA.json arch (`ResNeXt50Model`, `use_norm`) |
| batch / lr / wd | 256 / 0.1 / 5e-4, SGD momentum 0.9, **Nesterov** | RX50_ALA.json optimizer |
| epochs | 100 | RX50_ALA.json trainer (its name says "200e": the live value is 100) |
| lr schedule | `CustomLR`: warm-up lr (k + 1) / 5 for epochs k < 5, x0.1 from epoch 60 and x0.01 from 80 (0-based), stepped after each epoch | train.py `lr_lambda` + `LambdaLR` |
| DRW | `reweight_epoch: 160`, i.e. from 0-based epoch 160: **never on** in 100 epochs | RX50_ALA.json loss, model/loss.py `_hook_before_epoch` (`epoch > reweight_epoch`, 1-based) |
| ALA | s = 30, quantity factor log(2) / log(n / n_min + 1) (`"openlt"`) | model/loss.py line 363 |

GALA (decoupled stage on ResNeXt-50 features, lt-project config/ImageNet_LT/decoupled_resnext50.yaml:
batch 512, lr 0.12, wd 5e-4) and LOS (paper only) differ as noted in `imagenet_lt_r50`.
"""
from ltjax.recipes import large_scale


def get_config():
  c = large_scale.base_config(dataset="imagenet_lt", model="resnext50_32x4d", num_classes=1000)
  c.recipe = "imagenet_lt_rx50"
  c.num_epochs = 100
  c.batch_size = 256
  c.reference_batch_size = 256
  c.weight_decay = 5e-4
  c.nesterov = True
  large_scale.ldam_drw_schedule(c, base_lr=0.1, first_decay=60, second_decay=80)
  c.hparams.drw_start_epoch = 160  # OpenLT's reweight_epoch: past the last epoch
  c.hparams.ala_quantity_factor = "openlt"
  c.hparams.prs_tau = 1.7
  c.color_jitter = (0.4, 0.4, 0.4)
  return c
