"""ImageNet-LT, ResNet-50, ALA, as OpenLT's ALA config (the only ALA code; Liu et al. 2019's lists).

Every setting is liming-ai/OpenLT @33fa2a9 configs/ImageNet-LT/R50_ALALoss.json (with train.py,
trainer/trainer.py, model/loss.py ALALoss, data_loader/imagenet_lt_data_loaders.py), checked
setting by setting in tests/test_recipe_settings.py:

| setting | value | source |
|---|---|---|
| data | ImageNet_LT_{train,val,test}.txt (115,846 / 20,000 / 50,000 images, 1,000 classes) | OLTR lists (classifier-balancing data/) |
| model | torchvision ResNet-50 (2048-d features, `reduce_dimension: false`), cosine head, random init | R50_ALALoss.json arch |
| batch / lr / wd | 256 / 0.1 / 5e-4, SGD momentum 0.9, **Nesterov** | R50_ALALoss.json data_loader, optimizer |
| epochs, lr schedule | 180, `CosineAnnealingLR(T_max=180, eta_min=0)` stepped after each epoch, no warm-up | R50_ALALoss.json trainer, lr_scheduler; trainer.py `_train_epoch` |
| DRW | none (`ALALoss` args `{}`: `reweight_epoch=-1`); `drw_start_epoch = 180` is never reached | R50_ALALoss.json loss, model/loss.py |
| ALA | s = 30, quantity factor log(2) / log(n / n_min + 1) (`ala_quantity_factor="openlt"`) | model/loss.py ALALoss line 363 |
| input | RandomResizedCrop(224) + flip + ColorJitter(0.4, 0.4, 0.4, hue 0); eval resize 256 + centre crop 224; ImageNet normalisation | imagenet_lt_data_loaders.py (as classifier-balancing data/dataloader.py) |
| seed | 0 (the code's `--seed` is unset) | — |

ALA's paper (§4.2) is summarised elsewhere as 90 epochs with the LDAM-DRW step schedule; that text
was not readable here, and OpenLT's config is the code, so the recipe follows the code
(experiments/training_notes.md, "Large-scale recipes").

Other methods run with `--config.method=...`. GALA's ImageNet-LT numbers come from a decoupled
classifier stage (lt-project @1eea15d config/ImageNet_LT/softmax_resnet50.yaml: fixed features,
10 epochs, batch 128, lr 0.2, wd 5e-4, cosine, with GALA's margins on MiSLAS's label-aware smoothing
loss `loss/LabelAwareSmoothing.py`, not on plain CE, and `pow_for_logits: 1.0` in the file); the
PRS tau 1.7 of its README is set here as `hparams.prs_tau`. LOS reports ImageNet-LT in its paper
only (no official config). Other global batch sizes scale the lr linearly
(ltjax/recipes/large_scale.py).
"""
from ltjax.recipes import large_scale


def get_config():
  c = large_scale.base_config(dataset="imagenet_lt", model="resnet50", num_classes=1000)
  c.recipe = "imagenet_lt_r50"
  c.num_epochs = 180
  c.batch_size = 256
  c.reference_batch_size = 256
  c.weight_decay = 5e-4
  c.nesterov = True
  c.lr = {"name": "cosine", "base_lr": 0.1}
  c.hparams.drw_start_epoch = 180  # OpenLT's ALALoss without reweight_epoch: no DRW
  c.hparams.cb_beta = 0.9999
  c.hparams.ala_quantity_factor = "openlt"
  c.hparams.prs_tau = 1.7
  c.color_jitter = (0.4, 0.4, 0.4)
  return c
