"""`--import=module` (experiments/plugins.py): a method registered by a module outside the package
runs through `experiments.main` and is tabulated by `experiments.reproduce`, with no edit of
ltjax; a module that cannot be imported ends either command with one line."""
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from experiments import plugins
from experiments import shared_data

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RECIPE = "experiments/configs/fmnist_cnn.py"
_TFDS_CACHE = os.path.expanduser(os.environ.get("LTJAX_TEST_TFDS_DIR",
                                                "~/.cache/ltjax/tfds-tests"))
# The user's module: one loss and one register_method entry, with its own hyperparameter.
_PLUGIN = textwrap.dedent('''
    import ltjax
    from ltjax import train as lt

    SHARPNESS = lt.HParam("plugin_sharpness", 1.0, lt.Real(lo=0.0), "logit scale")

    def sharpened_ce(logits, labels, inputs, hp):
      return ltjax.losses.logit_adjusted_loss(hp["plugin_sharpness"] * logits, labels,
                                              log_prior=inputs.log_prior, tau=0.0)

    lt.register_method("plugin_ce", lt.Method(head="linear", loss=sharpened_ce,
                                             hparams=(SHARPNESS,)))
    ''')


@pytest.fixture
def plugin_dir(tmp_path):
  folder = tmp_path / "user_code"
  folder.mkdir()
  (folder / "my_ltjax_methods.py").write_text(_PLUGIN)
  return str(folder)


def _run(module, *args, pythonpath=None, timeout=600):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  if pythonpath:
    env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
  started = time.perf_counter()
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=_ROOT, capture_output=True,
                        text=True, timeout=timeout, check=False, env=env)
  return proc, time.perf_counter() - started


def test_import_flag_spellings():
  argv = ["main", "--import=a,b", "--config=x", "--import", "c", "--", "--import=d"]
  assert plugins.modules_in(argv) == ["a", "b", "c"]
  assert plugins.modules_in(["main", "--config=x"]) == []


def _broken_plugin(folder):
  (folder / "broken_plugin.py").write_text("raise RuntimeError('no GPU here\\nsecond line')\n")


def test_a_module_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch):
  _broken_plugin(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  for name, reason in (("no_such_plugin", "(not found)"),
                       ("broken_plugin", "(RuntimeError: no GPU here)")):
    with pytest.raises(SystemExit) as e:
      plugins.import_modules(["main", f"--import=json,{name}"])
    assert e.value.code == (
        f"--import={name}: cannot import module {name!r} {reason}; it must be on sys.path (the "
        "current folder or PYTHONPATH).")


def test_reproduce_ends_with_that_line_and_status_1(tmp_path):
  _broken_plugin(tmp_path)
  proc, seconds = _run("experiments.reproduce", "--import=broken_plugin", "--table=A",
                       "--report_only", f"--workdir={tmp_path / 'w'}", pythonpath=str(tmp_path))
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [(
      "--import=broken_plugin: cannot import module 'broken_plugin' (RuntimeError: no GPU here); "
      "it must be on sys.path (the current folder or PYTHONPATH).")]
  assert seconds < 60
  assert not (tmp_path / "w").exists()


def test_the_imported_method_is_known_to_the_config_validation(tmp_path, plugin_dir):
  # Its own hyperparameter's domain is checked (a config error before any data is read); without
  # --import the CLI knows no such method (tests/test_cli.py: "Unknown method").
  proc, _ = _run("experiments.main", "--import=my_ltjax_methods", f"--config={_RECIPE}",
                 "--config.method=plugin_ce", "--config.hparams.plugin_sharpness=-1",
                 f"--workdir={tmp_path / 'w'}", pythonpath=plugin_dir)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("Configuration error: ")
  assert "config.hparams.plugin_sharpness=-1" in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.integration
def test_a_method_from_outside_the_package_runs_through_main_and_reproduce(tmp_path,
                                                                           plugin_dir):
  workdir = tmp_path / "run"
  proc, _ = _run(
      "experiments.main", "--import=my_ltjax_methods", f"--config={_RECIPE}",
      "--config.method=plugin_ce", "--config.hparams.plugin_sharpness=0.5",
      "--config.num_epochs=1", "--config.model_kwargs.widths=(4,)",
      "--config.model_kwargs.features=8", "--config.val_per_class=10",
      f"--config.data_dir={_TFDS_CACHE}",
      f"--config.manual_dir={shared_data.shared_data_dir() / 'fashion-mnist'}",
      "--progress=false", f"--workdir={workdir}", pythonpath=plugin_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["method"] == "plugin_ce"
  assert results["config"]["hparams"]["plugin_sharpness"] == 0.5
  assert 0.0 <= results["test"]["top1"] <= 1.0 and len(results["test"]["per_class"]) == 10
  # reproduce: Table A has every registered method, so the imported one is a row of it.
  runs, out = tmp_path / "runs", tmp_path / "results"
  runs.mkdir()
  proc, _ = _run("experiments.reproduce", "--import=my_ltjax_methods", "--table=A",
                 "--methods=ce,plugin_ce", "--report_only", f"--workdir={runs}",
                 f"--results_dir={out}", pythonpath=plugin_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((out / "table_a.json").read_text())
  assert "plugin_ce" in record["missing_methods"]["100"]  # a row of the table, not run yet
  assert "plugin_ce" in (out / "table_a.md").read_text()
