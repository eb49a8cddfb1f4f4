"""Flax <-> PyTorch weight conversion (issue 11, deliverable 2) and PyTorch-semantics BatchNorm:
exact round trips both ways and the same forward output (train and eval mode) on the same input,
for the full ResNet-32 (kaidic/LDAM-DRW, both heads) and ResNet-34 (LOS)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# torch (the `test` extra on Python < 3.12, where its CPU wheel installs) runs the replicas.
torch = pytest.importorskip("torch")

from ltjax import models
from parity import torch_replicas as tr

pytestmark = pytest.mark.slow

CASES = {
    "resnet32-linear": ("resnet32", "linear", {}),
    "resnet32-cosine": ("resnet32", "cosine", {}),
    "resnet34-linear": ("resnet34", "linear", {}),
}
# The float64 forward comparison runs ResNet-34's full depth at a quarter of its widths (the
# full-width network costs a minute of CPU for no other structure).
FORWARD_KWARGS = {"resnet34": {"widths": (16, 32, 64, 128)}, "resnet32": {}}


def _flax(arch, head, key=0, **kw):
  clf = models.build_classifier(arch, num_classes=7, head=head, **kw)
  variables = clf.init(jax.random.PRNGKey(key), jnp.zeros((1, 32, 32, 3)), train=False)
  # Non-trivial running statistics, so that a swapped mean/var would show.
  rng = np.random.default_rng(key)
  stats = jax.tree.map(lambda v: np.asarray(v) + rng.uniform(0.1, 0.5, v.shape).astype(v.dtype),
                       variables["batch_stats"])
  return clf, jax.device_get(variables["params"]), stats


def _torch(arch, head, **kw):
  if arch == "resnet34":
    return tr.ResNetLOS(7, **kw)
  return tr.ResNetS(7, cosine=head == "cosine", **kw)


def _leaves_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_exact_both_ways(case):
  arch, head, _ = CASES[case]
  _, params, stats = _flax(arch, head)
  sd = models.to_torch_state_dict(params, stats, arch=arch)
  # The official module accepts the dict with strict=True (same keys, same shapes).
  net = _torch(arch, head)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  back_p, back_s = models.from_torch_state_dict(sd, arch=arch)
  _leaves_equal(back_p, params)
  _leaves_equal(back_s, stats)
  # torch -> flax -> torch, from a freshly initialised PyTorch model.
  torch_sd = {k: v.numpy() for k, v in _torch(arch, head).state_dict().items()}
  p2, s2 = models.from_torch_state_dict(torch_sd, arch=arch)
  sd2 = models.to_torch_state_dict(p2, s2, arch=arch)
  assert list(sd2) == list(torch_sd)
  for k, value in torch_sd.items():
    np.testing.assert_array_equal(sd2[k], value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_forward_in_train_and_eval_mode(case, x64):
  arch, head, _ = CASES[case]
  kw = FORWARD_KWARGS[arch]
  clf, params, stats = _flax(arch, head, key=1, **kw)
  params, stats = jax.tree.map(lambda v: np.asarray(v, np.float64), (params, stats))
  net = _torch(arch, head, **kw).double()
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       models.to_torch_state_dict(params, stats, arch=arch).items()})
  x = np.random.default_rng(2).normal(size=(3, 32, 32, 3))
  xt = torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
  variables = {"params": params, "batch_stats": stats}
  net.eval()
  np.testing.assert_allclose(clf.apply(variables, x, train=False),
                             net(xt).detach().numpy(), rtol=1e-10, atol=1e-12)
  net.train()
  logits, updates = clf.apply(variables, x, train=True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, net(xt).detach().numpy(), rtol=1e-10, atol=1e-12)
  # Running statistics after one train-mode batch, unbiased variance included.
  sd = models.to_torch_state_dict(params, updates["batch_stats"], arch=arch)
  for k, v in net.state_dict().items():
    if "running" in k:
      np.testing.assert_allclose(sd[k], v.numpy(), rtol=1e-10, atol=1e-14, err_msg=k)


def test_wrong_architecture_is_rejected():
  _, params, stats = _flax("resnet32", "linear")
  sd = models.to_torch_state_dict(params, stats, arch="resnet32")
  with pytest.raises(ValueError, match="resnet34"):
    models.from_torch_state_dict(sd, arch="resnet34")
  with pytest.raises(ValueError, match="Unknown arch"):
    models.to_torch_state_dict(params, stats, arch="vgg")


def test_batchnorm_running_variance_is_pytorchs_unbiased_one(x64):
  bn = models.BatchNorm()
  x = np.random.default_rng(3).normal(2.0, 3.0, size=(5, 3, 2, 4))
  variables = jax.tree.map(lambda v: np.asarray(v, np.float64),
                           bn.init(jax.random.PRNGKey(0), x))
  y, upd = bn.apply(variables, x, mutable=["batch_stats"])
  ref = torch.nn.BatchNorm2d(4).double()
  yt = ref(torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy()))
  np.testing.assert_allclose(y, np.transpose(yt.detach().numpy(), (0, 2, 3, 1)), rtol=1e-12)
  np.testing.assert_allclose(upd["batch_stats"]["var"], ref.running_var.numpy(), rtol=1e-13)
  np.testing.assert_allclose(upd["batch_stats"]["mean"], ref.running_mean.numpy(), rtol=1e-13)
