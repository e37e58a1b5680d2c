"""Code lines per module of a package folder: non-blank, non-comment lines, docstrings excluded
(the measure the house's line budgets use), and the functions longer than a limit.

    python bench/code_lines.py                    # odc_mini, functions over 80 lines
    python bench/code_lines.py odc_mini --longest 60
    git archive REV odc_mini | tar -x -C /tmp/rev && python bench/code_lines.py /tmp/rev/odc_mini
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ALGORITHM = ("memory.py", "odc.py", "deepcluster.py", "method.py", "train.py", "kmeans.py",
             "models.py")


def docstring_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            first = node.body[0] if node.body else None
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(path: Path) -> int:
    source = path.read_text()
    skip = docstring_lines(ast.parse(source))
    return sum(1 for number, line in enumerate(source.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and number not in skip)


def long_functions(path: Path, limit: int) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(n.end_lineno - n.lineno + 1, n.name) for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("package", nargs="?", default="odc_mini")
    parser.add_argument("--longest", type=int, default=80, help="list functions over this many lines")
    args = parser.parse_args()
    root = Path(args.package)
    total = algorithm = 0
    for path in sorted(root.rglob("*.py")):
        n = code_lines(path)
        total += n
        algorithm += n if path.parent == root and path.name in ALGORITHM else 0
        print(f"{n:6d}  {path.relative_to(root)}")
        for length, name in long_functions(path, args.longest):
            print(f"{'':8s}{name}: {length} lines")
    print(f"{algorithm:6d}  the algorithm files ({', '.join(ALGORITHM)})")
    print(f"{total:6d}  in all")


if __name__ == "__main__":
    main()
