"""The ImageNet-LT / iNat18 / Places-LT recipes: the keys every recipe has, the papers' numbers,
and the linear lr scaling with the global batch size."""
import importlib

import numpy as np
import pytest

from experiments import experiment
from experiments.configs import common
from experiments.configs import gala_r32
from experiments.configs import large_scale

RECIPES = ("imagenet_lt_r50", "imagenet_lt_rx50", "inat18_r50", "places_lt_r152")


def _config(name):
  return importlib.import_module(f"experiments.configs.{name}").get_config()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_has_every_shared_key_and_validates(name):
  config = _config(name)
  assert set(common.base_config().keys()) <= set(config.keys())
  assert config.recipe == name and config.method == "ala"
  experiment.validate_config(config, num_devices=8)
  assert config.mixed_precision is None  # auto: bf16 on accelerators, float32 on CPU
  config.mixed_precision = True  # the key is a bool placeholder, settable from the CLI


# OpenLT's configs for the first three (tests/test_recipe_settings.py names each file).
@pytest.mark.parametrize("name,model,batch,lr,wd,epochs,nesterov", [
    ("imagenet_lt_r50", "resnet50", 256, 0.1, 5e-4, 180, True),
    ("imagenet_lt_rx50", "resnext50_32x4d", 256, 0.1, 5e-4, 100, True),
    ("inat18_r50", "resnet50", 256, 0.1, 2e-4, 100, True),
    ("places_lt_r152", "resnet152", 256, 0.01, 5e-4, 30, False)])
def test_recipe_numbers(name, model, batch, lr, wd, epochs, nesterov):
  config = _config(name)
  assert (config.model, config.batch_size, config.lr.base_lr, config.weight_decay,
          config.num_epochs, config.nesterov) == (model, batch, lr, wd, epochs, nesterov)
  assert config.reference_batch_size == batch


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_normalises_with_its_datasets_statistics(name):
  # The decoupling code normalises iNaturalist 2018 with its own statistics, the rest (and the
  # ImageNet-pre-trained Places-LT backbone) with ImageNet's.
  config = _config(name)
  expected = ((large_scale.INAT18_MEAN, large_scale.INAT18_STD) if name == "inat18_r50"
              else (large_scale.IMAGENET_MEAN, large_scale.IMAGENET_STD))
  assert (tuple(config.mean), tuple(config.std)) == expected


def _epoch_lrs(config, epochs):
  fn = experiment._lr_fn(config, steps_per_epoch=1)  # pylint: disable=protected-access
  return np.array([float(fn(e)) for e in epochs])


def test_schedule_is_ldam_drw_at_imagenet_scale():
  config = _config("imagenet_lt_rx50")
  np.testing.assert_allclose(_epoch_lrs(config, [0, 4, 5, 59, 60, 79, 80, 99]),
                             [0.02, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)
  assert config.hparams.drw_start_epoch == 160 > config.num_epochs  # OpenLT's: never on


def test_lr_scales_linearly_with_global_batch():
  config = _config("imagenet_lt_rx50")
  config.batch_size = 1024
  np.testing.assert_allclose(_epoch_lrs(config, [4, 60]), [0.4, 0.04], rtol=1e-6)
  config.reference_batch_size = 0  # scaling off: the recipe's numbers as written
  np.testing.assert_allclose(_epoch_lrs(config, [4]), [0.1], rtol=1e-6)
  assert large_scale.scaled_lr({"name": "gala", "base_lr": 0.05, "warmup_lr": 0.1},
                               batch_size=128, reference_batch_size=64) == {
                                   "name": "gala", "base_lr": 0.1, "warmup_lr": 0.2}


def test_cifar_recipes_are_not_rescaled():
  config = gala_r32.get_config()
  assert "reference_batch_size" not in config
  assert float(experiment._lr_fn(config, steps_per_epoch=1)(5)) == pytest.approx(  # pylint: disable=protected-access
      0.1 * (1 + np.cos(np.pi * 4 / 198)) / 2, rel=1e-5)
