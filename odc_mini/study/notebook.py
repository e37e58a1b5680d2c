"""What every chapter of the book needs before its first real cell: where it runs, where the data
is, which profile and device to use, and a way to put computed numbers into the text.

    from odc_mini.study import notebook as nbk
    env = nbk.setup()                    # prints one line: profile, device, data, run cache
    cfg = env.config("odc")              # the chapter's Config, profile and data filled in
    nbk.glue("knn", 0.414, "{:.1%}")     # records "41.4%" under "knn"
    nbk.prose("kNN accuracy: {{knn}}.")  # Markdown, numbers filled in (renders everywhere)

The profile comes from ``$ODC_PROFILE`` (default ``quick``); set it before ``setup()``, or pass
``profile=``. In Colab, CIFAR-10 is downloaded through torchvision on first use; elsewhere it is read
from the nearest ``data/cifar10.npz`` (``$ODC_DATA``, then ``./data`` and the folders above).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from . import analysis
from .analysis import num, pct  # noqa: F401  (the chapters' nbk.pct and nbk.num)
from .store import default_cache_dir
from ..config import Config, default_profile
from ..data import DATA_ENV, NPZ_NAME


def find_data_root(start: str | Path | None = None) -> Path | None:
    """``$ODC_DATA`` if set, else the first ``data/`` holding ``cifar10.npz`` in ``start`` (the cwd)
    or a folder above it — chapters run in ``book/``, the data sits in the project's ``data/``."""
    if env := os.environ.get(DATA_ENV):
        return Path(env)
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "data" / NPZ_NAME).is_file():
            return folder / "data"
    return None


@dataclass
class Environment:
    profile: str
    device: str
    data_root: str | None
    download: bool
    cache_dir: Path

    def config(self, method: str = "odc", **overrides) -> Config:
        """A validated Config for ``method`` in this environment; ``overrides`` as in Config.

        The chapters train in fp32 on a CPU, not ``auto`` (bf16 on processors with bf16
        instructions): their worked examples re-compute steps of their runs and were written on
        fp32 states (chapter 3's forced small cluster does not hold as written on a bf16 state).
        """
        values = dict(profile=self.profile, device=self.device, data_root=self.data_root,
                      download=self.download, precision="fp32" if self.device == "cpu" else "auto")
        return Config(method=method, **{**values, **overrides}).validate()

    def describe(self) -> str:
        """One line; folders relative to the working folder, or to ``~``, so that a published
        page does not show the machine's own paths."""
        data = short_path(self.data_root) if self.data_root else (
            "downloaded with torchvision" if self.download else "not found")
        return (f"profile {self.profile} · device {self.device} · data {data} · "
                f"run cache {short_path(self.cache_dir)}")


def short_path(path) -> str:
    """``path`` relative to the working folder when it is inside the project around it, else
    with the home folder written as ``~``."""
    path, here = Path(path).resolve(), Path.cwd().resolve()
    if path.is_relative_to(here.parent):       # the working folder, or a folder beside it
        return os.path.relpath(path, here)
    home = Path.home().resolve()
    return "~/" + str(path.relative_to(home)) if path.is_relative_to(home) else str(path)


def setup(profile: str | None = None, seed: int = 0) -> Environment:
    """Seed, pick profile and device, find the data, set readable matplotlib defaults, and print
    the environment in one line."""
    import matplotlib as mpl

    torch.manual_seed(seed)
    profile = profile or default_profile()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    root = find_data_root()
    # Without a local copy, download (Colab, or a reader with internet); load_dataset says
    # clearly where it looked if that fails offline.
    env = Environment(profile, device, str(root) if root else None, root is None, default_cache_dir())
    try:  # figures inline in a kernel even when MPLBACKEND=Agg is set (the book build, tests)
        from IPython import get_ipython
        shell = get_ipython()
        if shell is not None and hasattr(shell, "kernel"):
            shell.run_line_magic("matplotlib", "inline")
            _note_text_size(shell)
    except ImportError:
        pass
    mpl.rcParams.update({"figure.dpi": 96, "savefig.dpi": 96, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False, "font.size": 11,
                         "legend.fontsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10})
    print(env.describe())
    return env


def _note_text_size(shell) -> None:
    """Inline figures as :func:`odc_mini.study.viz.figure_png` makes them: PNGs that note their
    smallest text size, which the book's browser test checks as the page shows it."""
    import base64

    from matplotlib.figure import Figure

    from .viz import figure_png
    shell.display_formatter.formatters["image/png"].for_type(
        Figure, lambda fig: base64.b64encode(figure_png(fig, close=False)).decode("ascii"))


# The numbers a chapter has computed, formatted, by name: what its prose refers to.
VALUES: dict[str, str] = {}


def glue(name: str, value, fmt: str | None = None) -> None:
    """Record ``value`` under ``name`` for the chapter's text, formatted with ``fmt`` (e.g.
    ``"{:.1%}"``) if given; :func:`prose` fills ``{{name}}`` with it. Returns nothing, so a
    cell that ends with it shows no stray output."""
    VALUES[name] = fmt.format(value) if fmt else str(value)


# Where glue_fact records what each page quotes (one JSON line per fact), when set: the book's
# build sets it, and a test compares the pages (tests/test_book.py).
FACTS_LOG_ENV = "ODC_FACTS_LOG"


def glue_fact(name: str, run, fact: str) -> None:
    """:func:`glue` the fact ``fact`` of ``run`` (:data:`odc_mini.study.analysis.FACTS`: one
    definition and format for every page), and record which run and fact the page quoted."""
    text = analysis.fact(run.history, fact)
    glue(name, text)
    if path := os.environ.get(FACTS_LOG_ENV):
        record = {"run": run.config.key(), "fact": fact, "text": text, "process": os.getpid(),
                  "name": getattr(run, "name", None) or run.history.meta.get("name")}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def fact_conflicts(records: list[dict]) -> list[str]:
    """One line per (run, fact) that the records quote with more than one text."""
    seen: dict[tuple[str, str], set[str]] = {}
    for r in records:
        seen.setdefault((r["run"], r["fact"]), set()).add(r["text"])
    return [f"{fact} of run {run}: {' vs '.join(sorted(texts))}"
            for (run, fact), texts in sorted(seen.items()) if len(texts) > 1]


_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Lines that Markdown (CommonMark, as the book, JupyterLab and Colab render it) turns into a list
# item or a quote: at a paragraph's start any "N." / "N)"; inside a paragraph only "1." / "1)"
# with text after it; "-", "+" or "*" with text after it, and ">" anywhere.
_OPENS_BLOCK = re.compile(r" {0,3}(1[.)] +\S|[-+*] +\S|>)")
_OPENS_BLOCK_FIRST = re.compile(r" {0,3}(\d{1,9}[.)]( |$)|[-+*] +\S|>)")
_ITEM = re.compile(r" *([-+*]|\d{1,9}[.)]) +")


def prose(text: str):
    """The chapter's ``text`` (Markdown) with every ``{{name}}`` replaced by the value
    :func:`glue` recorded, displayed as Markdown. A code cell's Markdown output renders in the
    built book, JupyterLab and Colab alike, so the numbers read right wherever the chapter is
    opened; the cells that call this hide their input. A name not glued yet is one error line,
    and so is a value that opens a line and turns it into a list item or a quote ("1) and")."""
    from IPython.display import Markdown

    if missing := sorted({m.group(1) for m in _PLACEHOLDER.finditer(text)} - set(VALUES)):
        raise KeyError(f"the text refers to {', '.join(missing)}, which no cell above has glued "
                       "(nbk.glue(name, value, fmt))")
    templates = text.strip("\n").split("\n")
    lines = [_PLACEHOLDER.sub(lambda m: VALUES[m.group(1)], t) for t in templates]
    for i, (template, line) in enumerate(zip(templates, lines)):
        first = i == 0 or not templates[i - 1].strip()
        if item := _ITEM.match(template):            # a list item's text starts a block too
            template, line, first = template[item.end():], line[item.end():], True
        if _PLACEHOLDER.match(template.lstrip()) and \
                (_OPENS_BLOCK_FIRST if first else _OPENS_BLOCK).match(line):
            raise ValueError(f"a glued value opens a Markdown list or quote: {line.strip()!r}; "
                             "break the line elsewhere, so that it starts with a word")
    return Markdown("\n".join(lines))


# Listings longer than this many lines are shown folded, under a line that names them.
FOLD_LINES = 20


def show_source(obj, start: str | None = None, end: str | None = None,
                folded: bool | None = None):
    """Display the package's own source of ``obj`` (a function, class or method), highlighted,
    so the book explains the code that runs rather than a re-typed copy of it. ``start`` and
    ``end``, if given, keep only the lines from the first one containing ``start`` to the first
    one after it containing ``end`` (inclusive): anchors in the code, not line numbers, so an
    excerpt cannot drift when the code above it changes. An anchor not found is an error.
    ``folded`` (default: longer than :data:`FOLD_LINES` lines) shows it folded under a line
    that names it and its length, which the reader opens with a click (an HTML ``details``
    element: the built book, JupyterLab and Colab all render it)."""
    import inspect
    import textwrap

    from IPython.display import HTML, Code

    source = textwrap.dedent(inspect.getsource(obj))
    lines = source.splitlines()
    first, last = 0, len(lines) - 1
    if start is not None:
        first = next((i for i, line in enumerate(lines) if start in line), None)
        if first is None:
            raise ValueError(f"{start!r} is not in the source of {obj.__qualname__}")
    if end is not None:
        last = next((i for i, line in enumerate(lines) if end in line and i >= first), None)
        if last is None:
            raise ValueError(f"{end!r} is not in the source of {obj.__qualname__} after {start!r}")
    if start is not None or end is not None:
        source = textwrap.dedent("\n".join(lines[first:last + 1]))
    code = Code(source, language="python")
    n = len(source.splitlines())
    if not (n > FOLD_LINES if folded is None else folded):
        return code
    return HTML(f"<details><summary>The package's code: <code>{obj.__qualname__}</code> "
                f"({n} lines; click to open)</summary>{code._repr_html_()}</details>")


def html_table(header, rows):
    """A small HTML table (myst-nb renders Markdown output without tables)."""
    from IPython.display import HTML

    def cells(row, tag):
        return "".join(f"<{tag}>{c}</{tag}>" for c in row)
    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows)
    return HTML(f"<table style='border-spacing: 0.8em 0.1em'>"
                f"<thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}</tbody></table>")
