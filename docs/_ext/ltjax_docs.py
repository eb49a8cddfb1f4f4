"""Sphinx extension: writes the API reference and the method pages from the package itself.

At `builder-inited` (before Sphinx reads the sources) it writes

* `api/<module>.rst` for each public module: the module docstring, a summary table and one
  autodoc entry per public name (the module's `__all__`, or the functions, classes and constants
  it defines when it has none), so a name added to a module appears without editing the docs;
* `registry/<method>.md` for every method in `ltjax.train.METHODS`: head, stage, loss, weights,
  state, post-hoc step, hyperparameters with defaults and domains, references and parity status.

Both folders are build outputs (git-ignored). A registered method without an entry in
`REFERENCES` below is a build warning, hence an error under `-W`.
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import re
import types

try:
  from sphinx.util import logging
except ImportError:  # imported by tests/test_docs_site.py, where Sphinx need not be installed
  import logging

LOGGER = logging.getLogger(__name__)

# The public modules, in the order of the API reference.
API_MODULES = (
    "ltjax.priors",
    "ltjax.losses",
    "ltjax.posthoc",
    "ltjax.metrics",
    "ltjax.testing",
    "ltjax.data",
    "ltjax.data.synthetic",
    "ltjax.models",
    "ltjax.train",
    "ltjax.checkpointing",
)

# What the registry does not hold: each built-in method's papers and its sections of the method
# notes. `name: (summary, [papers], [sections])`.
_CAO = ("Cao et al., \"Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss\", "
        "NeurIPS 2019")
_MENON = "Menon et al., \"Long-tail learning via logit adjustment\", ICLR 2021"
_ZHANG = ("Zhang et al., \"Gradient-Aware Logit Adjustment Loss for Long-tailed Classifier\", "
          "ICASSP 2024")
_KANG = ("Kang et al., \"Decoupling Representation and Classifier for Long-Tailed "
         "Recognition\", ICLR 2020")
_REN = "Ren et al., \"Balanced Meta-Softmax for Long-Tailed Visual Recognition\", NeurIPS 2020"
_CUI = ("Cui et al., \"Class-Balanced Loss Based on Effective Number of Samples\", CVPR 2019")
_ZHAO = ("Zhao et al., \"Adaptive Logit Adjustment Loss for Long-Tailed Visual Recognition\", "
         "AAAI 2022")
REFERENCES = {
    "ce": ("Softmax cross-entropy, the baseline every method is compared with.", [], ["1.3"]),
    "focal": ("Focal loss: cross-entropy down-weighted on well-classified examples.",
              ["Lin et al., \"Focal Loss for Dense Object Detection\", ICCV 2017"], ["2.6"]),
    "cb": ("Class-balanced loss: cross-entropy weighted by inverse effective numbers of samples.",
           [_CUI], ["2.7"]),
    "ce_drw": ("Cross-entropy with deferred re-weighting (class-balanced weights, late epochs).",
               [_CAO], ["2.5"]),
    "ldam_drw": ("LDAM: per-class margins proportional to n_c^(-1/4) on cosine logits, with DRW.",
                 [_CAO], ["2.4", "2.5"]),
    "balanced_softmax": ("Balanced Softmax: cross-entropy of logits shifted by the log counts.",
                         [_REN], ["2.8"]),
    "la_loss": ("The logit-adjusted loss: cross-entropy of logits shifted by tau log(prior).",
                [_MENON], ["2.2"]),
    "la_posthoc": (("Post-hoc logit adjustment: CE training, tau log(prior) subtracted at test "
                   "time (tau chosen on validation)."), [_MENON], ["2.1"]),
    "eql": ("Softmax equalization loss: rare classes' negative gradients dropped at random.",
            ["Tan et al., \"Equalization Loss for Long-Tailed Object Recognition\", CVPR 2020"],
            ["2.9"]),
    "gala": ("GALA: logits adjusted by accumulated per-class gradient statistics (stateful).",
             [_ZHANG], ["2.10"]),
    "gala_prs": ("GALA with its prediction re-balancing over the whole evaluation set.",
                 [_ZHANG], ["2.10", "2.11"]),
    "ala": ("ALA: adaptive logit adjustment (difficulty and quantity factors) on cosine logits.",
            [_ZHAO], ["2.13"]),
    "los": ("LOS: classifier re-training with over-smoothed labels on a frozen CE backbone.",
            ["Label over-smoothing, ICLR 2025"], ["2.12", "7"]),
    "crt": ("cRT: classifier re-trained from scratch with class-balanced sampling.",
            [_KANG], ["2.15"]),
    "tau_norm": (("tau-normalisation of a CE model's classifier (no training; tau chosen on "
                 "validation)."), [_KANG], ["2.14"]),
}

STAGE_TEXT = {
    "joint": "joint (trains the whole network)",
    "stage2": "stage 2 (trains the head on a frozen stage-1 backbone)",
    "posthoc": "post-hoc (trains nothing; re-evaluates a stage-1 checkpoint)",
}


def public_names(module: types.ModuleType) -> list[str]:
  """The module's `__all__`, else what it defines: functions and classes whose `__module__` is
  the module, and UPPER_CASE constants."""
  names = getattr(module, "__all__", None)
  if names is not None:
    return list(names)
  found = []
  for name, obj in vars(module).items():
    if name.startswith("_"):
      continue
    if inspect.isfunction(obj) or inspect.isclass(obj):
      if getattr(obj, "__module__", None) == module.__name__:
        found.append(name)
    elif name.isupper() and not isinstance(obj, types.ModuleType):
      found.append(name)
  return found


def summary(doc: str | None) -> str:
  """The first sentence of a docstring as one line of valid reST (a sentence ends at a period
  outside inline code)."""
  first = " ".join((doc or "").split("\n\n")[0].split())
  in_code = False
  for i, ch in enumerate(first):
    if ch == "`":
      in_code = not in_code
    elif ch == "." and not in_code and (i + 1 == len(first) or first[i + 1] == " "):
      first = first[:i + 1]
      break
  lines = [first]
  normalize_docstring(None, None, None, None, None, lines)
  text = lines[0]
  if text.count("`") % 2:
    text = text.replace("`", "")
  # Emphasis markers outside code spans are literal here (`**kwargs`).
  parts = text.split("`")
  parts[::2] = [part.replace("*", "\\*") for part in parts[::2]]
  return "`".join(parts)


def _short_repr(obj, limit=160) -> str:
  text = repr(obj)
  return text if len(text) <= limit else text[:limit - 5] + " ...)"


def _entry(modname: str, name: str, obj) -> list[str]:
  """The reST of one public name."""
  full = f"{modname}.{name}"
  if isinstance(obj, types.ModuleType):
    # A namespace module re-exported under a public name (`ltjax.testing.strategies`): its own
    # public functions, documented under the public path.
    lines = [f".. py:module:: {full}", "", f".. rubric:: ``{full}``", ""]
    doc = inspect.getdoc(obj)
    if doc:
      lines += [doc, ""]
    for sub in public_names(obj):
      lines += _entry(full, sub, getattr(obj, sub))
    return lines + [f".. currentmodule:: {modname}", ""]
  if inspect.isclass(obj):
    return [f".. autoclass:: {full}", "   :members:", ""]
  if callable(obj):
    return [f".. autofunction:: {full}", ""]
  # Data: its type and a short value (autodoc finds no docstring for a re-exported constant).
  return [f".. py:data:: {name}", f"   :module: {modname}", f"   :type: {type(obj).__name__}", "",
          f"   ``{_short_repr(obj)}``", ""]


def api_page(modname: str) -> str:
  module = importlib.import_module(modname)
  names = public_names(module)
  title = f"``{modname}``"
  lines = [title, "=" * len(title), "", f".. automodule:: {modname}", "   :no-members:",
           "   :no-index:", "", f".. currentmodule:: {modname}", ""]
  # The summary table lists functions and classes (a constant has no docstring of its own:
  # autosummary would show its type's).
  summarised = [n for n in names if callable(getattr(module, n))
                and not isinstance(getattr(module, n), types.ModuleType)]
  if summarised:
    lines += [".. list-table::", "   :widths: 35 65", ""]
    for n in summarised:
      lines += [f"   * - :py:obj:`{n} <{modname}.{n}>`",
                f"     - {summary(inspect.getdoc(getattr(module, n)))}"]
    lines += [""]
  for name in names:
    lines += _entry(modname, name, getattr(module, name))
  return "\n".join(lines) + "\n"


def api_index() -> str:
  lines = ["API reference", "=============", "",
           "Every public name of the package, generated from its docstrings at build time. The",
           "pure numerics (``priors``, ``losses``, ``posthoc``, ``metrics``) and the testing kit",
           "need only the core install; ``data`` needs the ``[data]`` extra and ``models``,",
           "``train`` and ``checkpointing`` the ``[train]`` extra.", "",
           ".. toctree::", "   :maxdepth: 1", ""]
  lines += [f"   {m}" for m in API_MODULES]
  return "\n".join(lines) + "\n"


def _called(fn, namespaces) -> list[str]:
  """The public functions `fn` calls, as `module.name` (from its code's global names)."""
  code = getattr(fn, "__code__", None)
  if code is None:
    return []
  found = []
  for prefix, module in namespaces:
    for name in code.co_names:
      if name in getattr(module, "__all__", ()) and callable(getattr(module, name)):
        found.append(f"{prefix}.{name}")
  if "softmax_cross_entropy_with_integer_labels" in code.co_names:
    found.append("optax.softmax_cross_entropy_with_integer_labels")
  return found


def _code_list(names) -> str:
  return ", ".join(f"`{n}`" for n in names) if names else "—"


def parity_tests(root: pathlib.Path, name: str) -> list[str]:
  """The parity test files that exercise method `name` (its quoted name appears in them)."""
  folder = root / "tests" / "parity"
  if not folder.is_dir():
    return []
  pattern = re.compile(rf"[\"']{re.escape(name)}[\"']")
  return [f"tests/parity/{f.name}" for f in sorted(folder.glob("test_parity_*.py"))
          if pattern.search(f.read_text())]


def method_page(name: str, method, root: pathlib.Path) -> str:
  from ltjax import losses  # noqa: PLC0415 (the package is imported once Sphinx runs)
  from ltjax import models  # noqa: PLC0415
  from ltjax import posthoc  # noqa: PLC0415
  namespaces = [("ltjax.losses", losses), ("ltjax.posthoc", posthoc), ("ltjax.models", models)]
  summary, papers, sections = REFERENCES.get(name, ("", [], []))
  if name not in REFERENCES:
    LOGGER.warning("ltjax_docs: method %r has no entry in REFERENCES (docs/_ext/ltjax_docs.py)",
                   name)
  rows = [
      ("head", f"`{method.head}`" + (" (cosine logits)" if method.head == "cosine" else "")),
      ("stage", STAGE_TEXT.get(method.stage, method.stage)),
      ("loss", _code_list(_called(method.loss, namespaces))),
      ("class weights", _code_list(_called(method.class_weights, namespaces))
       if method.class_weights is not None else "none (plain batch mean)"),
      ("loss state", _code_list(_called(method.init_state, namespaces) +
                                _called(method.update_state, namespaces))
       if _called(method.init_state, namespaces) else "none"),
      ("sampler", f"`{method.sampler}`"),
  ]
  if method.posthoc is not None:
    ph = method.posthoc
    step = _called(ph.logits or ph.params, namespaces)
    sweep = (f"τ swept over `{ph.grid.name}` on the validation split" if ph.grid is not None
             else f"τ fixed by `{ph.tau.name}`")
    rows.append(("post-hoc step", f"`{ph.name}`: {_code_list(step)}; {sweep}"))
  else:
    rows.append(("post-hoc step", "none"))
  if method.reuses:
    what = ("its training run is that method's" if method.stage == "joint"
            else "its stage 1")
    rows.append(("reuses", f"[`{method.reuses}`]({method.reuses}.md) ({what})"))
  lines = [f"# `{name}`", "", summary, "", "| | |", "|---|---|"]
  lines += [f"| {k} | {v} |" for k, v in rows]
  lines += ["", "## Hyperparameters", ""]
  if method.hparams:
    lines += [("Set from a recipe as `--config.hparams.<name>=VALUE`; a value outside its domain "
              "fails before anything is built."), "",
              "| name | default | domain | meaning |", "|---|---|---|---|"]
    for hp in method.hparams:
      default = hp.default
      if isinstance(default, tuple) and len(default) > 6:
        default = f"({default[0]}, {default[1]}, ..., {default[-1]}) ({len(default)} values)"
      lines.append(f"| `{hp.name}` | `{default}` | {hp.domain} | {hp.doc} |")
  else:
    lines.append("None.")
  lines += ["", "## References", ""]
  lines += [f"- {p}" for p in papers] or ["- none recorded"]
  if sections:
    # The notes' sections are raw-HTML anchors (`<a id="s2.2">`), so the link is raw HTML too.
    lines.append("- {doc}`Method notes <../methods>`: " + ", ".join(
        f'<a href="../methods.html#s{s}">§{s}</a>' for s in sections))
  lines += ["", "## Parity with the official code", ""]
  tests = parity_tests(root, name)
  if tests:
    lines.append("Covered by " + ", ".join(f"`{t}`" for t in tests) + ": ltjax's compiled train "
                 "step (or evaluation) against a float64 PyTorch replica of the official code, "
                 "teacher-forced step by step (method notes §6).")
  else:
    lines.append("No parity test names this method.")
  lines += ["", "## Train it", "", "```bash",
            "ltjax-train --config=fmnist_cnn \\",
            f"    --config.method={name} --workdir=/tmp/fmnist-{name}", "```"]
  if method.stage != "joint":
    lines += ["", (f"A {method.stage} method starts from a `{method.reuses}` run: pass "
              "`--config.init_checkpoint=<that run's workdir>`.")]
  return "\n".join(lines) + "\n"


def registry_index(methods) -> str:
  lines = ["# Methods", "",
           ("One page per method registered in `ltjax.train.METHODS`, generated from the registry "
           "at build time. A method registered with `ltjax.train.register_method` gets the same "
           "treatment from the CLI, the evaluation and the reproduction scripts."), "",
           "| method | head | stage | hyperparameters |", "|---|---|---|---|"]
  for name, m in methods.items():
    hps = ", ".join(f"`{hp.name}`" for hp in m.hparams) or "—"
    lines.append(f"| [`{name}`]({name}.md) | {m.head} | {m.stage} | {hps} |")
  lines += ["", "```{toctree}", ":hidden:", ""] + list(methods) + ["```"]
  return "\n".join(lines) + "\n"


def _write(path: pathlib.Path, text: str) -> None:
  # Rewrite only on change, so incremental builds do not re-read every page.
  if not path.exists() or path.read_text() != text:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def generate(app) -> None:
  src = pathlib.Path(app.srcdir)
  root = src.parent
  api = src / "api"
  _write(api / "index.rst", api_index())
  for modname in API_MODULES:
    _write(api / f"{modname}.rst", api_page(modname))
  from ltjax import train  # noqa: PLC0415
  registry = src / "registry"
  _write(registry / "index.md", registry_index(train.METHODS))
  for name, method in train.METHODS.items():
    _write(registry / f"{name}.md", method_page(name, method, root))
  stale = set(registry.glob("*.md")) - {registry / f"{n}.md" for n in train.METHODS}
  for p in stale - {registry / "index.md"}:
    p.unlink()


# Two habits of plain-text docstrings that reST reads otherwise: a plural after inline code
# ("`HParam`s", an unterminated code role) and absolute values ("|logits|", a substitution).
_CODE_PLURAL = re.compile(r"(`[^`\s][^`]*`)(s\b)")
_ABS_VALUE = re.compile(r"(?<![`\\|])\|([A-Za-z_][\w.]*)\|(?![`|])")


def normalize_docstring(app, what, name, obj, options, lines) -> None:
  del app, what, name, obj, options
  for i, line in enumerate(lines):
    line = _CODE_PLURAL.sub(r"\1\\ \2", line)
    lines[i] = _ABS_VALUE.sub(r"\\|\1\\|", line)


def setup(app):
  app.connect("builder-inited", generate)
  app.connect("autodoc-process-docstring", normalize_docstring)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
