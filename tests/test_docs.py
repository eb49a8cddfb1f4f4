"""Every citation of the method notes points at docs/methods.md inside the repository, at a
section that exists there."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTES = ROOT / "docs" / "methods.md"
# `methods.md` with its directory prefix, then `§N` / `§N.M` sections joined by ",", "and" or
# whitespace (line breaks included).
CITATION = re.compile(r"(\S*?)methods\.md((?:[\s,]+(?:and\s+)?§\d+(?:\.\d+)?)*)")


def cited_sections(text):
  """(prefix, [sections]) of every `methods.md` citation in `text`."""
  return [(m.group(1), re.findall(r"§(\d+(?:\.\d+)?)", m.group(2)))
          for m in CITATION.finditer(text)]


def anchors():
  return set(re.findall(r'<a id="s(\d+(?:\.\d+)?)"></a>', NOTES.read_text()))


def repository_texts():
  files = [ROOT / "README.md"]
  for folder in ("ltjax", "experiments", "tests", "docs"):
    files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.md"))
  # The built site (docs/_build) holds copies of the sources, methods.md included.
  return {f.relative_to(ROOT).as_posix(): f.read_text() for f in files
          if f.is_file() and f not in (NOTES, pathlib.Path(__file__).resolve())
          and "_build" not in f.relative_to(ROOT).parts}


def test_every_section_heading_has_its_anchor():
  text = NOTES.read_text()
  headings = set(re.findall(r"^#+ §(\d+(?:\.\d+)?) ", text, re.MULTILINE))
  assert headings == anchors() and {"0", "1.1", "2.10", "3", "4", "7"} <= headings
  # Each anchor sits right above its heading.
  for section in headings:
    assert f'<a id="s{section}"></a>\n#' in text


def test_citations_point_at_existing_sections_inside_the_repository():
  known = anchors()
  found = 0
  for path, text in repository_texts().items():
    for prefix, sections in cited_sections(text):
      found += 1
      assert prefix.endswith("docs/"), f"{path} cites methods.md outside docs/: {prefix!r}"
      assert sections, f"{path} cites docs/methods.md without a section"
      assert set(sections) <= known, f"{path} cites missing sections {set(sections) - known}"
  assert found >= 20  # the notes are cited throughout; an empty scan would pass vacuously


def test_citation_parser():
  text = "see docs/methods.md §1.4 and §3), methods.md\n    §2.10.) and /x/methods.md §9"
  assert cited_sections(text) == [("docs/", ["1.4", "3"]), ("", ["2.10"]), ("/x/", ["9"])]
