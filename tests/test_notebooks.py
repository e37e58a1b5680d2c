"""Every chapter notebook in book/ is committed clean: no outputs, no execution counts, and a first
code cell that installs odc_mini when the notebook is opened in Colab.

That every chapter runs top to bottom in a fresh kernel is checked by the book build
(``tests/test_book.py``): it executes every notebook with an empty execution cache and fails on
any cell error. (Executing them a second time here cost CI about 4 minutes.) To run one chapter
alone: ``jupyter nbconvert --to notebook --execute book/03_online.ipynb --output /tmp/out``.
"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTEBOOKS = sorted(BOOK.glob("*.ipynb"))


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    dirty = [i for i, cell in enumerate(read(path).cells) if cell.cell_type == "code"
             and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts (clear them)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_installs_on_colab(path):
    code = [cell.source for cell in read(path).cells if cell.cell_type == "code"]
    assert code and "google.colab" in code[0], \
        f"{path.name}: the first code cell should install odc_mini when run in Colab"


# What a plain Markdown renderer (JupyterLab, Colab) would show as typed: MyST roles such as
# {glue:text}`x` or {cite}`key`, directive fences such as ```{admonition}, colon fences (:::),
# and a {{name}} placeholder of nbk.prose left unfilled.
RAW_MYST = re.compile(r"\{[a-z][a-z:-]*\}`|```\{|^:::|\{\{\w+\}\}", re.MULTILINE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_reads_right_without_the_book_build(path):
    """Markdown cells hold no MyST-only syntax; text with computed numbers is a code cell that
    displays Markdown (nbk.prose), hidden as code in the book, JupyterLab and Colab."""
    cells = read(path).cells
    raw = [(i, RAW_MYST.search(c.source).group(0)) for i, c in enumerate(cells)
           if c.cell_type == "markdown" and RAW_MYST.search(c.source)]
    assert not raw, f"{path.name}: markdown cells show MyST syntax as typed: {raw}"
    for i, cell in enumerate(cells):
        if cell.cell_type == "code" and "nbk.prose(" in cell.source:
            assert "remove-input" in cell.metadata.get("tags", []), (path.name, i)
            assert cell.metadata.get("jupyter", {}).get("source_hidden"), (path.name, i)
            assert cell.metadata.get("cellView") == "form" and cell.source.startswith("#@title")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_answers_are_hidden_until_asked(path):
    """Solution code is collapsed in the book (hide-input), JupyterLab and Colab; written
    answers sit in <details> blocks, closed until the reader opens them."""
    for i, cell in enumerate(read(path).cells):
        if cell.cell_type == "code" and cell.source.startswith("#@title Solution"):
            assert "hide-input" in cell.metadata.get("tags", []), (path.name, i)
            assert cell.metadata.get("jupyter", {}).get("source_hidden"), (path.name, i)
        if cell.cell_type == "markdown" and "<details" in cell.source:
            assert "<details open" not in cell.source, (path.name, i)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_colab_badge_and_install_cell_point_at_the_configured_repository(path):
    """book/_config.yml's repository.url is the one place it is set (book/sync_repository.py
    writes it into the chapters)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("sync_repository", BOOK / "sync_repository.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    url, _ = sync.repository()
    cells = read(path).cells
    badges = re.findall(r"\((https://colab\.research\.google\.com/github/[^)]*)\)", cells[0].source)
    assert badges == [sync.badge_url(path.name)], f"{path.name}: run python book/sync_repository.py"
    install = [c.source for c in cells if c.cell_type == "code"][0]
    assert f'REPOSITORY = "{url}"' in install and 'f"odc_mini @ git+{REPOSITORY}"' in install


GLUE_CALL = re.compile(r"nbk\.glue\(")
LITERAL = re.compile(r'(f?)"((?:\w|\{[^}"]*\})+)"')


def _names(literal: str, is_f: bool) -> re.Pattern:
    """A glued name as a pattern: an f-string's {...} parts match any word."""
    if not is_f:
        return re.compile(re.escape(literal))
    return re.compile(re.sub(r"\\\{[^}]*\\\}", r"\\w+", re.escape(literal)))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_refers_only_to_numbers_glued_above_it(path):
    """A chapter runs top to bottom: every {{name}} of an nbk.prose cell must be glued by a cell
    above it (or earlier in the same cell). Names are read from the glue cells' string literals
    (f-strings match any word in their {...} parts), which is generous, but it catches the text
    that comes before the cell computing its numbers."""
    glued: list[re.Pattern] = []
    late = []
    for i, cell in enumerate(read(path).cells):
        if cell.cell_type != "code":
            continue
        source = cell.source
        cut = source.find("nbk.prose(")
        before = source if cut < 0 else source[:cut]
        if GLUE_CALL.search(before):
            glued += [_names(name, bool(f)) for f, name in LITERAL.findall(before)]
        if cut >= 0:
            for ref in sorted(set(re.findall(r"\{\{(\w+)\}\}", source[cut:]))):
                if not any(p.fullmatch(ref) for p in glued):
                    late.append(f"cell {i}: {{{{{ref}}}}}")
    assert not late, f"{path.name}: text refers to numbers not glued above it: {late}"


@pytest.mark.parametrize("template, value", [
    ("It peaks at 6.4 (epoch\n{{v}}) and ends", "1"),      # the defect once shipped: "1)" opens a list
    ("It peaks at 6.4 (epoch\n{{v}}) and ends", "12"),     # inside a paragraph only 1 opens one
    ("The batch holds\n{{v}}. Then the step", "128"),
    ("The batch holds\n{{v}}. Then the step", "1"),
    ("{{v}}. starts the text", "3"),
    ("First paragraph.\n\n{{v}} starts the second", "2."),
    ("a gap of\n{{v}} points", "-1.2"),
    ("a gap of\n{{v}} points", "- 1.2"),
    ("a ratio of\n{{v}} at most", "> 2"),
    ("* {{v}} in a bullet of its own", "1."),
])
def test_prose_refuses_a_glued_value_that_opens_a_list_or_quote(template, value):
    """nbk.prose raises exactly when Markdown (markdown-it, CommonMark, which myst-nb uses and
    JupyterLab and Colab follow) turns the text into more blocks than the template without the
    value: a list item or a quote the writer did not mean."""
    from markdown_it import MarkdownIt
    from odc_mini.study import notebook as nbk

    def blocks(text):
        return [t.type for t in MarkdownIt("commonmark").parse(text)
                if t.type in ("bullet_list_open", "ordered_list_open", "blockquote_open")]
    nbk.glue("v", value)
    meant = blocks(template.replace("{{v}}", "word"))
    broken = blocks(template.replace("{{v}}", value)) != meant
    if broken:
        with pytest.raises(ValueError, match="opens a Markdown list or quote"):
            nbk.prose(template)
    else:
        assert nbk.prose(template).data == template.replace("{{v}}", value)


# ---------------------------------------------------------------------------------------------
# Numbers typed into prose
# ---------------------------------------------------------------------------------------------
# What a result looks like in prose: a percentage, a decimal with two places or more, or a
# decimal with a unit. Math ($...$), inline code and link targets are not prose.
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$", re.S)
_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\]\([^)]*\)")
_RESULT = re.compile(r"(?<![\w.{])(\d+(?:[.,]\d+)?\s?%|\d+\.\d{2,}|\d+\.\d+ (?:points|min|s|h|MB|GB)\b)")
_PROSE_CALL = re.compile(r'nbk\.prose\(r?"""(.*?)"""', re.S)

# Numbers prose may type: facts about the world, the reference code or the tests, not results
# of a run (every result is glued from the code that computes it).
TYPED_OK = {
    "00_preface": {"3.10"},                            # the Python version required
    "01_clustering_as_supervision": {"1%"},            # the tests' tolerance, FAISS vs torch
    "02_alternating": {"1%", "1.28"},                  # the same; ImageNet's 1.28 million images
    "08_results": {"0.05", "0.06"},                    # the significance level; the authors' lr
}


def typed_results(text: str) -> list[str]:
    """The numbers in ``text`` that look like results, outside math, code and links."""
    return [m.group(0) for m in _RESULT.finditer(_LINK.sub("]", _CODE.sub("", _MATH.sub("", text))))]


@pytest.mark.parametrize("text, found", [
    ("the churn falls to 61% in the last epoch", ["61%"]),
    ("NMI(t-1, t) is 0.642 against 0.639", ["0.642", "0.639"]),
    ("ODC took 18.2 min and DeepCluster 20.7 min", ["18.2 min", "20.7 min"]),
    ("a gap of 3.3 points", ["3.3 points"]),
    ("below $p = 0.05$, with `lr=0.06` and {{knn_odc}}%", []),
    ("see [the paper](https://arxiv.org/abs/2006.10645), chapter 8.2 and epoch 3", []),
])
def test_typed_result_detector(text, found):
    assert typed_results(text) == found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_types_no_result(path):
    """Markdown cells and nbk.prose texts type no number that looks like a result; a result is
    glued from the code that computes it, so that the page and its run cannot disagree."""
    typed = []
    for i, cell in enumerate(read(path).cells):
        texts = [cell.source] if cell.cell_type == "markdown" else \
            _PROSE_CALL.findall(cell.source) if cell.cell_type == "code" else []
        typed += [f"cell {i}: {n}" for t in texts for n in typed_results(t)
                  if n not in TYPED_OK.get(path.stem, set())]
    assert not typed, f"{path.name} types numbers into its prose: {typed}"


def test_show_source_folds_long_listings_under_their_name():
    import inspect
    import textwrap

    from IPython.display import HTML, Code
    from odc_mini.memory import ODCMemory
    from odc_mini.study import notebook as nbk

    def lines(f):
        return len(textwrap.dedent(inspect.getsource(f)).splitlines())

    short, long = ODCMemory.recount, ODCMemory.update_samples
    assert lines(short) <= nbk.FOLD_LINES < lines(long)
    shown = nbk.show_source(short)
    assert isinstance(shown, Code) and shown.data == textwrap.dedent(inspect.getsource(short))
    folded = nbk.show_source(long)
    assert isinstance(folded, HTML) and folded.data.startswith("<details><summary>")
    assert f"<code>ODCMemory.update_samples</code> ({lines(long)} lines" in folded.data
    assert "new_labels" in folded.data                       # the code itself, inside
    assert isinstance(nbk.show_source(short, folded=True), HTML)
    assert isinstance(nbk.show_source(long, folded=False), Code)
