"""Point every chapter's "Open in Colab" badge and Colab install cell at the repository named in
book/_config.yml (``repository.url`` and ``repository.branch``): the one place it is set.

    python book/sync_repository.py          # after changing repository.url; then commit

tests/test_notebooks.py fails while a chapter points elsewhere.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

BOOK = Path(__file__).resolve().parent


def repository() -> tuple[str, str]:
    """(url, branch) from _config.yml, e.g. ("https://github.com/owner/repo", "main")."""
    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    repo = config["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def badge_url(notebook: str) -> str:
    url, branch = repository()
    path = url.split("github.com/", 1)[1]
    return f"https://colab.research.google.com/github/{path}/blob/{branch}/book/{notebook}"


BADGE = re.compile(r"\(https://colab\.research\.google\.com/github/[^)]*\)")
INSTALL = re.compile(r'REPOSITORY = "[^"]*"')


def sync(path: Path) -> bool:
    """Rewrite ``path``'s badge and install cell; True if anything changed."""
    nb = json.loads(path.read_text())
    url, _ = repository()
    changed = False
    for cell in nb["cells"]:
        text = "".join(cell["source"])
        new = BADGE.sub(f"({badge_url(path.name)})", text)
        new = INSTALL.sub(f'REPOSITORY = "{url}"', new)
        if new != text:
            lines = new.split("\n")
            cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
            changed = True
    if changed:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return changed


if __name__ == "__main__":
    for notebook in sorted(BOOK.glob("*.ipynb")):
        if sync(notebook):
            print(f"{notebook.name}: now points at {repository()[0]}")
    sys.exit(0)
