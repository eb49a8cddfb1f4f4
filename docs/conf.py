"""Sphinx configuration of ltjax's documentation site.

Build (offline, warnings are errors): `sphinx-build -W --keep-going -b html docs docs/_build/html`
with the `docs` extra installed. The API reference and the method pages are generated at build
time from the package (`_ext/ltjax_docs.py`), so they cannot drift from the code; the tutorial
notebook is executed on every build; MathJax is served from the site's `_static` (no CDN).
"""
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# The checkout's ltjax first (autodoc, the registry), and the same for the notebook's kernel,
# which is a subprocess.
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(DOCS / "_ext"))
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
# The docs run on CPU whatever the machine has, with no accelerator probing.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

project = "ltjax"
author = "the ltjax authors"
copyright = "the ltjax authors, Apache-2.0"
release = version = "0.1.0"

extensions = [
    "myst_nb",  # MyST markdown pages and executed notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # Google-style docstrings (Args:, Returns:, Raises:, References:)
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    # Serves MathJax 3 from `_static/mathjax` (bundled in the wheel) and points mathjax_path
    # there: the pages render maths with no network.
    "sphinx-mathjax-offline",
    "ltjax_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
root_doc = "index"

# Docstrings write code in single backticks (Google style): render it as code, not italics.
default_role = "code"
# Straight quotes: the pages quote code values (`one of 'code', 'paper'`) as Python writes them.
smartquotes = False

# autodoc / napoleon
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": False}
autosummary_generate = False  # the pages are written by ltjax_docs, not by autosummary
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # an `Attributes:` section must not re-declare autodoc's members
napoleon_use_rtype = False

# MyST
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# MyST-NB: execute every notebook page on every build; a failing cell fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 300
nb_merge_streams = True

html_theme = "sphinx_book_theme"
html_title = "ltjax"
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": False,
    "use_fullscreen_button": False,
}
html_static_path: list[str] = []
html_last_updated_fmt = None
