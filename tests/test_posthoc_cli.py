"""`ltjax-posthoc` on logits saved from a small PyTorch model trained inside the test."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from ltjax import posthoc_cli

torch = pytest.importorskip("torch")

NUM_CLASSES = 6
COUNTS = np.array([400, 160, 64, 25, 10, 4])  # imbalance ratio 100


def _draw(rng, means, per_class):
  labels = np.repeat(np.arange(NUM_CLASSES), per_class)
  features = means[labels] + rng.standard_normal((labels.size, means.shape[1]))
  return features.astype(np.float32), labels


@pytest.fixture(scope="module")
def saved_logits(tmp_path_factory):
  """A 2-layer MLP trained with plain CE on a long-tailed Gaussian mixture (PyTorch, CPU, < 1 s);
  its validation and test logits saved as a PyTorch user would, with `np.savez`."""
  rng = np.random.default_rng(0)
  means = 1.6 * rng.standard_normal((NUM_CLASSES, 8))
  x_train, y_train = _draw(rng, means, COUNTS)
  x_val, y_val = _draw(rng, means, np.full(NUM_CLASSES, 40))
  x_test, y_test = _draw(rng, means, np.full(NUM_CLASSES, 150))
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 6))
  optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
  inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
  for _ in range(300):
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), targets).backward()
    optimizer.step()
  directory = tmp_path_factory.mktemp("logits")
  with torch.no_grad():
    for name, x, y in (("val", x_val, y_val), ("test", x_test, y_test)):
      np.savez(directory / f"{name}.npz", logits=model(torch.from_numpy(x)).numpy(), labels=y)
      np.save(directory / f"{name}_logits.npy", model(torch.from_numpy(x)).numpy())
      np.save(directory / f"{name}_labels.npy", y)
  np.save(directory / "counts.npy", COUNTS)
  return directory


def _balanced_accuracy(scores, labels):
  predictions = scores.argmax(-1)
  return np.mean([np.mean(predictions[labels == c] == c) for c in range(NUM_CLASSES)])


@pytest.mark.slow
def test_report_on_pytorch_logits(saved_logits, tmp_path, capsys):
  d = saved_logits
  out = tmp_path / "report"
  assert posthoc_cli.main([f"--val={d / 'val.npz'}", f"--test={d / 'test.npz'}",
                           f"--class_counts={d / 'counts.npy'}", f"--out={out}"]) == 0
  assert "with post-hoc LA" in capsys.readouterr().out
  results = json.loads((out / "posthoc.json").read_text())
  assert set(results["methods"]) == {"none", "la", "prs"}
  for entry in results["methods"].values():
    for split in ("val", "test"):
      r = entry[split]
      assert len(r["per_class"]) == len(r["logits_magnitude"]) == len(r["rsd"]) == NUM_CLASSES
      for key in ("top1", "balanced_error", "accuracy", "many", "medium", "few", "ece",
                  "logits_magnitude_mean", "rsd_mean"):
        assert r[key] is not None and np.isfinite(r[key]), (key, r[key])
      assert r["top1"] == pytest.approx(1 - r["balanced_error"], abs=1e-6)

  # tau is the validation argmax (ties to the tau nearest 1), recomputed here in NumPy from the
  # saved files: the test split plays no part in the choice.
  val, test = np.load(d / "val.npz"), np.load(d / "test.npz")
  log_prior = np.log(COUNTS / COUNTS.sum() + 1e-12)
  sweep = {t: _balanced_accuracy(val["logits"] - t * log_prior, val["labels"])
           for t in posthoc_cli.DEFAULT_TAUS}
  best = max(sweep, key=lambda t: (round(sweep[t], 6), -abs(t - 1.0)))
  la = results["methods"]["la"]
  assert la["tau"] == pytest.approx(best)
  assert la["val_sweep"][str(float(best))] == pytest.approx(sweep[best], abs=1e-6)
  assert la["test"]["top1"] == pytest.approx(
      _balanced_accuracy(test["logits"] - best * log_prior, test["labels"]), abs=1e-6)
  # A CE model on a 100:1 split: post-hoc LA (and PRS) lower the balanced test error.
  none = results["methods"]["none"]["test"]
  assert la["test"]["balanced_error"] < none["balanced_error"] - 0.02
  assert results["methods"]["prs"]["test"]["balanced_error"] < none["balanced_error"]
  assert la["test"]["few"] > none["few"]

  markdown = (out / "posthoc.md").read_text()
  assert "| la | " in markdown and "tau sweep" in markdown
  for png in ("per_class.png", "tau_sweep.png"):
    assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert results["plots"] == ["per_class.png", "tau_sweep.png"]


@pytest.mark.slow
def test_npy_inputs_and_a_custom_grid_give_the_same_choice(saved_logits, tmp_path):
  d = saved_logits
  args = [f"--val_logits={d / 'val_logits.npy'}", f"--val_labels={d / 'val_labels.npy'}",
          f"--test_logits={d / 'test_logits.npy'}", f"--test_labels={d / 'test_labels.npy'}",
          f"--class_counts={d / 'counts.npy'}", "--taus=0:2:0.1", "--noplot"]
  assert posthoc_cli.main(args + [f"--out={tmp_path / 'a'}"]) == 0
  assert posthoc_cli.main([f"--val={d / 'val.npz'}", f"--test={d / 'test.npz'}",
                           f"--class_counts={d / 'counts.npy'}", "--noplot",
                           f"--out={tmp_path / 'b'}"]) == 0
  a = json.loads((tmp_path / "a" / "posthoc.json").read_text())
  b = json.loads((tmp_path / "b" / "posthoc.json").read_text())
  assert a["methods"] == b["methods"]
  assert not (tmp_path / "a" / "per_class.png").exists()


@pytest.mark.parametrize("change, message", [
    ({"--class_counts": "missing.npy"}, r"--class_counts: no such file"),
    ({"--class_counts": "short_counts.npy"}, r"--class_counts has 5 entries but the logits have 6"),
    ({"--val": "bad_labels.npz"}, r"--val labels must lie in \[0, 6\)"),
    ({"--val": "no_labels.npz"}, r"--val labels: .* has no array 'labels'"),
])
def test_bad_inputs_give_one_line_and_exit_status_2(saved_logits, tmp_path, capsys, change,
                                                    message):
  d = saved_logits
  np.save(tmp_path / "short_counts.npy", COUNTS[:5])
  val = np.load(d / "val.npz")
  np.savez(tmp_path / "bad_labels.npz", logits=val["logits"], labels=val["labels"] + 1)
  np.savez(tmp_path / "no_labels.npz", logits=val["logits"])
  flags = {"--val": str(d / "val.npz"), "--test": str(d / "test.npz"),
           "--class_counts": str(d / "counts.npy")}
  flags.update({k: str(tmp_path / v) for k, v in change.items()})
  argv = [f"{k}={v}" for k, v in flags.items()] + [f"--out={tmp_path / 'out'}", "--noplot"]
  assert posthoc_cli.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("ltjax-posthoc: error: ")

  assert re.search(message, err), err
  assert not (tmp_path / "out" / "posthoc.json").exists()


def test_module_runs_with_help_and_imports_no_training_stack():
  code = ("import sys; import ltjax.posthoc_cli; "
          "heavy = {'flax', 'orbax', 'tensorflow_datasets', 'matplotlib', 'torch', 'ltjax.train'}; "
          "print(sorted(heavy & set(sys.modules)))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert done.stdout.strip() == "[]"
  done = subprocess.run([sys.executable, "-m", "ltjax.posthoc_cli", "--help"],
                        capture_output=True, text=True, check=True)
  assert "--class_counts" in done.stdout and "--taus" in done.stdout
