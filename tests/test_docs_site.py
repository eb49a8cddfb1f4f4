"""The built documentation site (`sphinx-build -W --keep-going -b html docs docs/_build/html`,
run by .ci/run before the suite), opened in a headless Chromium: the API reference documents
every public name, every registered method has its page, and the maths is typeset by the
MathJax the site serves itself (no network).

Skipped when the site is not built or no Chromium is installed, unless LTJAX_REQUIRE_DOCS=1
(as .ci/run sets it), where that is a failure.
"""
import html
import importlib
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SITE = pathlib.Path(os.environ.get("LTJAX_DOCS_HTML", ROOT / "docs" / "_build" / "html"))
REQUIRED = os.environ.get("LTJAX_REQUIRE_DOCS") == "1"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def _unavailable(reason):
  if REQUIRED:
    pytest.fail(f"{reason} (LTJAX_REQUIRE_DOCS=1)")
  pytest.skip(reason)


def _docs_extension():
  spec = importlib.util.spec_from_file_location("ltjax_docs", ROOT / "docs/_ext/ltjax_docs.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def site():
  if not (SITE / "index.html").is_file():
    _unavailable(f"no built site at {SITE}: run `sphinx-build -W --keep-going -b html docs "
                 "docs/_build/html` with the `docs` extra")
  return SITE


@pytest.fixture(scope="module")
def chromium():
  for name in BROWSERS:
    path = shutil.which(name)
    if path:
      return path
  _unavailable("no headless Chromium (Debian: `apt-get install chromium`)")


def run_browser(chromium, *args, timeout=120):
  """Chromium headless; `--virtual-time-budget` lets the page's scripts (MathJax) finish."""
  command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--allow-file-access-from-files", "--virtual-time-budget=20000", *args]
  result = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def test_api_pages_document_every_public_name(site):
  docs = _docs_extension()
  missing = {}
  for modname in docs.API_MODULES:
    page = (site / "api" / f"{modname}.html").read_text()
    ids = set(re.findall(r'id="([^"]+)"', page))
    module = importlib.import_module(modname)
    # A re-exported namespace module (`ltjax.testing.strategies`) has a module anchor.
    absent = [n for n in docs.public_names(module)
              if not {f"{modname}.{n}", f"module-{modname}.{n}"} & ids]
    if absent:
      missing[modname] = absent
  assert not missing, f"public names without an entry in the API reference: {missing}"


def test_every_registered_method_has_its_page_with_its_hyperparameters(site):
  from ltjax import train  # noqa: PLC0415 (the training extra, imported by this test only)
  for name, method in train.METHODS.items():
    page = html.unescape((site / "registry" / f"{name}.html").read_text())
    for hp in method.hparams:
      assert hp.name in page and str(hp.domain) in page, (name, hp.name)
    assert "Parity with the official code" in page


def test_api_page_maths_is_typeset_by_the_local_mathjax(site, chromium):
  page = site / "api" / "ltjax.losses.html"
  source = page.read_text()
  scripts = re.findall(r'<script[^>]+src="([^"]+)"', source)
  mathjax = [s for s in scripts if "mathjax" in s.lower()]
  assert mathjax and not any(s.startswith(("http:", "https:", "//")) for s in scripts), scripts
  assert (page.parent / mathjax[0].split("?")[0]).resolve().is_file()  # a "?v=" digest may follow
  formulas = source.count('class="math notranslate nohighlight"')
  assert formulas >= 5  # the losses' docstrings are full of `.. math::`
  dom = run_browser(chromium, "--dump-dom", page.as_uri())
  assert "logit_adjusted_loss" in dom
  # MathJax's CommonHTML output: one <mjx-container> per formula, no TeX errors.
  assert dom.count("<mjx-container") == formulas
  assert "<mjx-merror" not in dom and "data-mjx-error" not in dom


def test_formula_screenshot_is_not_blank(site, chromium, tmp_path):
  """A formula typeset by the site's MathJax, written white on white: only glyphs that MathJax
  rendered (drawn black) can darken the screenshot's formula region."""
  image = pytest.importorskip("PIL.Image")
  mathjax = (site / "_static" / "mathjax" / "tex-chtml.js").as_uri()
  (tmp_path / "formula.html").write_text(f"""<!DOCTYPE html><html><head><style>
      body {{ margin: 0; background: white; }}
      #f {{ position: absolute; left: 0; top: 0; width: 600px; height: 150px; color: white;
            font-size: 40px; }}
      #f mjx-container {{ color: black; }}
    </style><script src="{mathjax}"></script></head>
    <body><div id="f">\\[\\ell(z, y) = -\\log \\frac{{e^{{z_y + \\tau \\log \\pi_y}}}}
      {{\\sum_j e^{{z_j + \\tau \\log \\pi_j}}}}\\]</div></body></html>""")
  screenshot = tmp_path / "formula.png"
  run_browser(chromium, "--window-size=800,300", f"--screenshot={screenshot}",
              (tmp_path / "formula.html").as_uri())
  pixels = image.open(screenshot).convert("L").crop((0, 0, 600, 150))
  dark = sum(pixels.histogram()[:128])
  assert dark > 500, f"only {dark} dark pixels where the formula should be"
  # And a picture of the home page for a person to look at (LTJAX_DOCS_SCREENSHOT=path).
  target = os.environ.get("LTJAX_DOCS_SCREENSHOT")
  if target:
    run_browser(chromium, "--window-size=1280,1000", f"--screenshot={target}",
                (site / "index.html").as_uri())
