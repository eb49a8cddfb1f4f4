"""The documentation's Python snippets run as written: every ```python block of a guide page,
in order, in one namespace per page (a later block may use an earlier block's names)."""
import pathlib
import re

import pytest

pytestmark = pytest.mark.slow  # each page compiles its examples (10-40 s on 2 busy cores)

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
PAGES = ("getting_started.md", "guides/compose_losses.md", "guides/gala_state.md",
         "guides/testing_kit.md")
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def python_blocks(text):
  return BLOCK.findall(text)


def test_block_parser():
  text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
  assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("page", PAGES)
def test_page_snippets_run(page):
  blocks = python_blocks((DOCS / page).read_text())
  assert blocks, f"{page} has no python snippet"
  namespace = {"__name__": f"docs_{page.replace('/', '_')}"}
  for i, block in enumerate(blocks):
    code = compile(block, f"docs/{page}, python block {i + 1}", "exec")
    exec(code, namespace)
