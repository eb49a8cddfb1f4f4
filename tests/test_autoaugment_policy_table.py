"""ltjax's CIFAR-10 AutoAugment policy, entry by entry, against the official `CIFAR10Policy`
table (issue 23): each sub-policy's two operations, probabilities and magnitude bins, the
magnitude ranges, which magnitudes get a random sign, and the fill colour.

Written from lt-project-repository/lt-project @1eea15d `data/autoaugment.py` (the copy GALA's
`data/ImbalanceCIFAR.py` imports): `CIFAR10Policy.__init__` (25 `SubPolicy(p1, op1, bin1, p2, op2,
bin2, fillcolor)` lines) and `SubPolicy.__init__` (`ranges`, and `func`, where shear, translate,
color, contrast, sharpness and brightness multiply their magnitude by `random.choice([-1, 1])`).
DeepVoltaire/AutoAugment @19c8c48 `autoaugment.py`, the port it was taken from, has the same 25
lines and ranges; its later `ops.py` `Rotate` also draws a sign, which the copy GALA runs does
not (so ltjax does not).
"""
import numpy as np
import pytest

from ltjax.data import _autoaugment as aa

# CIFAR10Policy.__init__, in the official order and spelling: (p1, op1, bin1, p2, op2, bin2).
OFFICIAL_CIFAR10_POLICY = (
    (0.1, "invert", 7, 0.2, "contrast", 6),
    (0.7, "rotate", 2, 0.3, "translateX", 9),
    (0.8, "sharpness", 1, 0.9, "sharpness", 3),
    (0.5, "shearY", 8, 0.7, "translateY", 9),
    (0.5, "autocontrast", 8, 0.9, "equalize", 2),
    (0.2, "shearY", 7, 0.3, "posterize", 7),
    (0.4, "color", 3, 0.6, "brightness", 7),
    (0.3, "sharpness", 9, 0.7, "brightness", 9),
    (0.6, "equalize", 5, 0.5, "equalize", 1),
    (0.6, "contrast", 7, 0.6, "sharpness", 5),
    (0.7, "color", 7, 0.5, "translateX", 8),
    (0.3, "equalize", 7, 0.4, "autocontrast", 8),
    (0.4, "translateY", 3, 0.2, "sharpness", 6),
    (0.9, "brightness", 6, 0.2, "color", 8),
    (0.5, "solarize", 2, 0.0, "invert", 3),
    (0.2, "equalize", 0, 0.6, "autocontrast", 0),
    (0.2, "equalize", 8, 0.6, "equalize", 4),
    (0.9, "color", 9, 0.6, "equalize", 6),
    (0.8, "autocontrast", 4, 0.2, "solarize", 8),
    (0.1, "brightness", 3, 0.7, "color", 0),
    (0.4, "solarize", 5, 0.9, "autocontrast", 3),
    (0.9, "translateY", 9, 0.7, "translateY", 9),
    (0.9, "autocontrast", 2, 0.8, "solarize", 3),
    (0.8, "equalize", 8, 0.1, "invert", 3),
    (0.7, "translateY", 9, 0.9, "autocontrast", 1),
)

# SubPolicy.__init__ `ranges`: (start, stop) of np.linspace(start, stop, 10); posterize is
# np.round(np.linspace(8, 4, 10), 0).astype(int); the last three ignore their magnitude ([0] * 10).
OFFICIAL_RANGES = {
    "shearX": (0, 0.3), "shearY": (0, 0.3), "translateX": (0, 150 / 331),
    "translateY": (0, 150 / 331), "rotate": (0, 30), "color": (0.0, 0.9),
    "posterize": (8, 4), "solarize": (256, 0), "contrast": (0.0, 0.9), "sharpness": (0.0, 0.9),
    "brightness": (0.0, 0.9), "autocontrast": None, "equalize": None, "invert": None,
}
# SubPolicy.__init__ `func`: the operations whose magnitude is multiplied by
# random.choice([-1, 1]) (rotate's lambda has no sign in this copy).
OFFICIAL_SIGNED = {"shearX", "shearY", "translateX", "translateY", "color", "contrast",
                   "sharpness", "brightness"}
OFFICIAL_FILL = (128, 128, 128)  # SubPolicy / CIFAR10Policy default fillcolor

# The official camelCase names and ltjax's.
NAMES = {"shearX": "shear_x", "shearY": "shear_y", "translateX": "translate_x",
         "translateY": "translate_y", "rotate": "rotate", "color": "color",
         "posterize": "posterize", "solarize": "solarize", "contrast": "contrast",
         "sharpness": "sharpness", "brightness": "brightness", "autocontrast": "autocontrast",
         "equalize": "equalize", "invert": "invert"}


def test_policy_has_the_official_25_subpolicies_in_order():
  assert len(aa.CIFAR10_POLICY) == len(OFFICIAL_CIFAR10_POLICY) == 25
  for i, (ours, (p1, op1, b1, p2, op2, b2)) in enumerate(
      zip(aa.CIFAR10_POLICY, OFFICIAL_CIFAR10_POLICY)):
    expected = ((NAMES[op1], p1, b1), (NAMES[op2], p2, b2))
    assert tuple(map(tuple, ours)) == expected, f"sub-policy {i}: {ours} != official {expected}"


@pytest.mark.parametrize("official", sorted(OFFICIAL_RANGES))
def test_magnitude_bins_are_the_official_ranges(official):
  ours = np.asarray(aa.MAGNITUDES[NAMES[official]])
  bounds = OFFICIAL_RANGES[official]
  if bounds is None:
    np.testing.assert_array_equal(ours, np.zeros(10))
  elif official == "posterize":
    np.testing.assert_array_equal(ours, np.round(np.linspace(*bounds, 10), 0).astype(int))
    assert ours.tolist() == [8, 8, 7, 7, 6, 6, 5, 5, 4, 4]
  else:
    np.testing.assert_array_equal(ours, np.linspace(*bounds, 10))


def test_signed_operations_and_fill_are_the_officials():
  assert frozenset(aa.SIGNED) == {NAMES[n] for n in OFFICIAL_SIGNED}
  assert (aa.FILL,) * 3 == OFFICIAL_FILL


def test_compiled_program_carries_the_table():
  """What the compiled policy runs (`policy_program`): per sub-policy and position, the
  probability (float32 of the official one) and the operation branch of the official table."""
  program = aa.policy_program()
  probs = np.array([[p1, p2] for p1, _, _, p2, _, _ in OFFICIAL_CIFAR10_POLICY], np.float32)
  np.testing.assert_array_equal(program.probability, probs)
  names = [[NAMES[o1], NAMES[o2]] for _, o1, _, _, o2, _ in OFFICIAL_CIFAR10_POLICY]
  # Two positions run the same operation iff the official table names the same one.
  flat_names = [n for row in names for n in row]
  flat_branches = program.branch_of.ravel().tolist()
  for i, a in enumerate(flat_names):
    for j, b in enumerate(flat_names):
      assert (a == b) == (flat_branches[i] == flat_branches[j])
