"""Issue 13's "done when": a method written here, one loss function and one `register_method`
entry (a "tempered LA" with its own tau default), runs through the CLI's run, `reproduce`'s
planning and runner, and the evaluation, with no other edit anywhere."""
import json

import jax
import numpy as np
import pytest

import ltjax
from experiments import experiment
from experiments import reproduce
from experiments.configs import fmnist_cnn
from ltjax import train as lt
from tests.test_checkpoint import tiny_config
from tests.test_checkpoint import tiny_splits

# Its own hyperparameter: the temperature of both its loss and its (fixed) post-hoc step.
TEMPERED_TAU = lt.HParam("tempered_tau", 1.5, lt.Real(lo=0.0), "tempered LA temperature")
NAME = "tempered_la"


def tempered_la_loss(logits, labels, inputs, hp):
  """Logit-adjusted loss at the method's own temperature."""
  return ltjax.losses.logit_adjusted_loss(logits, labels, log_prior=inputs.log_prior,
                                          tau=hp["tempered_tau"])


def _register():
  return lt.register_method(NAME, lt.Method(
      head="linear", loss=tempered_la_loss, hparams=(TEMPERED_TAU,),
      posthoc=lt.PostHoc("tempered_adjust", tau=TEMPERED_TAU, logits=(
          lambda z, *, log_prior, tau: ltjax.posthoc.adjust_logits(z, log_prior=log_prior,
                                                                   tau=tau)))))


def _toy_source(dataset, split, *, data_dir, manual_dir):
  """Ten separable classes of 8x8 images (a bright row per class), served as plain arrays."""
  del dataset, data_dir, manual_dir
  rng = np.random.default_rng(0 if split == "train" else 1)
  labels = np.repeat(np.arange(10), 30 if split == "train" else 4)
  images = rng.integers(0, 60, (len(labels), 8, 8, 1)).astype(np.uint8)
  images[np.arange(len(labels)), labels % 8] += 180
  return ltjax.data.array_source(images, labels, num_classes=10)


TINY = {"num_epochs": 1, "batch_size": 16, "eval_batch_size": 16, "imbalance_ratio": 10.0,
        "val_per_class": 3, "model_kwargs": {"widths": (4,), "features": 8}}


def test_a_method_added_with_one_loss_and_one_entry_runs_everywhere(tmp_path, prepared):
  assert NAME not in lt.METHODS
  with _register():
    # The CLI's run: its default temperature reaches the evaluation; an override is checked
    # against its domain like any registered hyperparameter.
    config = fmnist_cnn.get_config()
    config.update(TINY, method=NAME, data_dir=prepared)
    results = experiment.run(config, str(tmp_path / "cli"), progress=False, source=_toy_source)
    assert results["posthoc"] == {"step": "tempered_adjust", "tau": 1.5, "val_sweep": {}}
    assert 0.0 <= results["test"]["top1"] <= 1.0 and len(results["test"]["per_class"]) == 10
    with open(tmp_path / "cli" / experiment.RESULTS_FILE) as f:
      assert json.load(f)["method"] == NAME
    config.hparams.tempered_tau = -1.0
    with pytest.raises(experiment.ConfigError, match=r"config.hparams.tempered_tau=-1.0"):
      experiment.validate_config(config, num_devices=1)

    # reproduce: the full table lists it, it plans as a joint method, and the runner trains and
    # tabulates it.
    assert NAME in reproduce.get_table("A").methods
    spec = reproduce.TableSpec(
        name="table_t", title="t", recipe="fmnist_cnn", imbalance_ratios=(10.0,),
        methods=("ce", NAME), seeds=(0,), num_epochs=1, stage2_epochs=1,
        overrides={**{k: v for k, v in TINY.items() if k != "imbalance_ratio"},
                   "data_dir": prepared}, vmap=False)
    assert NAME not in reproduce.same_training(spec)
    assert reproduce.run_order([NAME, "ce"], reproduce.same_training(spec)) == [NAME, "ce"]
    workdir = str(tmp_path / "reproduce")
    failures = reproduce.run_table(spec, (NAME,), workdir=workdir, vmap=False,
                                   source=_toy_source)
    assert failures == []
    rows = reproduce.collect(spec, (NAME,), workdir=workdir)["10"]
    assert rows[NAME]["posthoc_tau"] == [1.5]
  assert NAME not in lt.METHODS and "tempered_tau" not in lt.DEFAULT_HPARAMS


def test_build_experiment_takes_its_mesh_and_method_without_the_registry():
  method = lt.Method(head="linear", loss=tempered_la_loss, hparams=(TEMPERED_TAU,))
  config = tiny_config(NAME, 1)
  mesh = lt.data_mesh(jax.devices()[:2])
  exp = experiment.build_experiment(config, tiny_splits(), mesh=mesh, method=method)
  assert exp.method is method and exp.mesh is mesh and exp.hp["tempered_tau"] == 1.5
  assert NAME not in lt.METHODS
  with pytest.raises(experiment.ConfigError, match="Unknown method 'tempered_la'"):
    experiment.build_experiment(config, tiny_splits())
