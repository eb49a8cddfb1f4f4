"""Issue 13's "done when": a method written here, one loss function and one `register_method`
entry (a "tempered LA" with its own tau default and sweep), runs through the CLI's run,
`reproduce`'s planning, runner and report, the evaluation and the figures, with no other edit
anywhere."""
import json

import jax
import numpy as np
import pytest

import ltjax
from experiments import experiment
from experiments import figures
from experiments import report
from experiments import runner
from experiments import tables
from experiments.configs import fmnist_cnn
from ltjax import train as lt
from tests.test_checkpoint import tiny_config
from tests.test_checkpoint import tiny_splits

# Its own hyperparameters: the temperature of its loss and the configured one of its post-hoc
# step, and the post-hoc step's sweep on validation.
TEMPERED_TAU = lt.HParam("tempered_tau", 1.5, lt.Real(lo=0.0), "tempered LA temperature")
TEMPERED_GRID = lt.HParam("tempered_tau_grid", (1.0, 1.5, 2.0), lt.Grid(lt.Real(lo=0.0)),
                          "tempered LA post-hoc sweep")
NAME = "tempered_la"


def tempered_la_loss(logits, labels, inputs, hp):
  """Logit-adjusted loss at the method's own temperature."""
  return ltjax.losses.logit_adjusted_loss(logits, labels, log_prior=inputs.log_prior,
                                          tau=hp["tempered_tau"])


def _register():
  return lt.register_method(NAME, lt.Method(
      head="linear", loss=tempered_la_loss, hparams=(TEMPERED_TAU, TEMPERED_GRID),
      posthoc=lt.PostHoc("tempered_adjust", tau=TEMPERED_TAU, grid=TEMPERED_GRID, logits=(
          lambda z, *, log_prior, tau: ltjax.posthoc.adjust_logits(z, log_prior=log_prior,
                                                                   tau=tau)))))


def toy_source(dataset, split, *, data_dir, manual_dir):
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
    results = experiment.run(config, str(tmp_path / "cli"), progress=False, source=toy_source)
    posthoc = results["posthoc"]
    assert posthoc["step"] == "tempered_adjust" and set(posthoc["val_sweep"]) == {"1.0", "1.5",
                                                                                "2.0"}
    assert posthoc["val_sweep"][str(posthoc["tau"])] == max(posthoc["val_sweep"].values())
    assert 0.0 <= results["test"]["top1"] <= 1.0 and len(results["test"]["per_class"]) == 10
    with open(tmp_path / "cli" / experiment.RESULTS_FILE) as f:
      assert json.load(f)["method"] == NAME
    config.hparams.tempered_tau = -1.0
    with pytest.raises(experiment.ConfigError, match=r"config.hparams.tempered_tau=-1.0"):
      experiment.validate_config(config, num_devices=1)

    # reproduce: the full table lists it, it plans as a joint method, and the runner trains and
    # tabulates it.
    assert NAME in tables.get_table("A").methods
    spec = tables.TableSpec(
        name="table_t", title="t", recipe="fmnist_cnn", imbalance_ratios=(10.0,),
        methods=("ce", NAME), seeds=(0,), num_epochs=1, stage2_epochs=1,
        overrides={**{k: v for k, v in TINY.items() if k != "imbalance_ratio"},
                   "data_dir": prepared}, vmap=False)
    assert NAME not in tables.same_training(spec)
    assert runner.run_order([NAME, "ce"], tables.same_training(spec)) == [NAME, "ce"]
    workdir = str(tmp_path / "reproduce")
    failures = runner.run_table(spec, (NAME,), workdir=workdir, vmap=False,
                                source=toy_source)
    assert failures == []
    rows = report.collect(spec, (NAME,), workdir=workdir)["10"]
    assert rows[NAME]["posthoc_tau"][0] in TEMPERED_GRID.default

    # The figures: its post-hoc sweep is plotted (on its own run, with its own grid), its
    # per-class accuracy too; the gradient-ratio probe trains the table's baseline and, had it a
    # gradient-accumulating loss state, it.
    runner.run_table(spec, spec.methods, workdir=workdir, vmap=False, source=toy_source)
    out = str(tmp_path / "figures")
    sweep = figures.posthoc_sweep(spec, 10.0, workdir=workdir, results_dir=out,
                                  source=toy_source)
    assert list(sweep["balanced_accuracy"]) == [NAME]
    assert sweep["balanced_accuracy"][NAME]["taus"] == [1.0, 1.5, 2.0]
    assert sweep["runs"][NAME] == [tables.run_dir(workdir, spec, NAME, 10.0, 0)]
    # Its validation curve is the sweep its own evaluation selected tau from.
    np.testing.assert_allclose(sweep["balanced_accuracy"][NAME]["val"]["mean"],
                               [100 * v for v in _val_sweep(workdir, spec)], rtol=1e-6)
    classes = figures.per_class(spec, workdir=workdir, results_dir=out)
    assert set(classes["per_class"]["10"]) == {"ce", NAME}
    ratio = figures.grad_ratio(spec, 10.0, workdir=workdir, results_dir=out, every=1,
                               source=toy_source)
    assert ratio["methods"] == ["ce"] and len(ratio["traces"]["ce"]["ratio"][-1]) == 10
    for name in ("fig_posthoc_sweep", "fig_per_class", "fig_gala_grad_ratio"):
      assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
  assert NAME not in lt.METHODS and "tempered_tau" not in lt.DEFAULT_HPARAMS


def _val_sweep(workdir, spec):
  """The validation top-1 per tau the tempered LA run recorded (its results.json)."""
  results = tables.read_ok_results(tables.run_dir(workdir, spec, NAME, 10.0, 0))
  return [results["posthoc"]["val_sweep"][k] for k in ("1.0", "1.5", "2.0")]


def test_build_experiment_takes_its_mesh_and_method_without_the_registry():
  method = lt.Method(head="linear", loss=tempered_la_loss, hparams=(TEMPERED_TAU,))
  config = tiny_config(NAME, 1)
  mesh = lt.data_mesh(jax.devices()[:2])
  exp = experiment.build_experiment(config, tiny_splits(), mesh=mesh, method=method)
  assert exp.method is method and exp.mesh is mesh and exp.hp["tempered_tau"] == 1.5
  assert NAME not in lt.METHODS
  with pytest.raises(experiment.ConfigError, match="Unknown method 'tempered_la'"):
    experiment.build_experiment(config, tiny_splits())
