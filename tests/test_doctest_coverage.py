"""Every public function and class of the core modules has a doctest example (issue #24).

CI runs the examples themselves (`pytest --doctest-modules ltjax`); this test makes sure none is
missing: each name in a core module's `__all__` (or, for a module without one, each public
function and class it defines) that ltjax defines has an `Examples:` section with a `>>>` line.
"""
import importlib
import inspect
import re

import pytest

CORE_MODULES = ("ltjax.priors", "ltjax.losses", "ltjax.posthoc", "ltjax.metrics", "ltjax.testing")
SECTION = re.compile(r"^\s*Examples?:\s*$", re.MULTILINE)


def public_objects(module_name):
  """`{name: object}` of the functions and classes ltjax defines among a module's public names.

  Re-exported submodules (`ltjax.testing.strategies`) and names from other packages are not
  ltjax's API here and are left out.
  """
  module = importlib.import_module(module_name)
  names = getattr(module, "__all__", None)
  if names is None:
    names = [name for name, value in vars(module).items()
             if not name.startswith("_") and getattr(value, "__module__", None) == module_name]
  objects = {}
  for name in names:
    value = getattr(module, name)
    if ((inspect.isfunction(value) or inspect.isclass(value))
        and (getattr(value, "__module__", None) or "").startswith("ltjax")):
      objects[name] = value
  return objects


def has_example(obj):
  doc = inspect.getdoc(obj) or ""
  return bool(SECTION.search(doc)) and ">>>" in doc


@pytest.mark.parametrize("module_name", CORE_MODULES)
def test_every_public_name_has_a_doctest_example(module_name):
  objects = public_objects(module_name)
  assert objects, f"{module_name} exports no function or class"
  missing = sorted(name for name, obj in objects.items() if not has_example(obj))
  assert not missing, (f"{module_name}: no `Examples:` section with a `>>>` doctest in the "
                       f"docstring of {', '.join(missing)}")


def test_public_objects_reads_all_and_skips_modules():
  testing = public_objects("ltjax.testing")
  assert "check_all" in testing and "Case" in testing and "strategies" not in testing
  # ltjax.priors has no `__all__`: its own functions, not `jnp` or `annotations`.
  assert set(public_objects("ltjax.priors")) == {"class_prior", "log_prior"}
