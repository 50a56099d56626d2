"""Classes over 300 lines and functions over 60 in core/ and plugins/ (AST count)."""
from __future__ import annotations
import ast, sys
from pathlib import Path

CLASS_LIMIT, FUNCTION_LIMIT = 300, 60

def oversized(root: Path) -> list[tuple[str, str, int, int]]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if "template" in path.parts:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                limit = CLASS_LIMIT if isinstance(node, ast.ClassDef) else FUNCTION_LIMIT
                if size > limit:
                    found.append((str(path), node.name, node.lineno, size))
    return found

if __name__ == "__main__":
    rows = [r for top in ("core", "plugins") for r in oversized(Path(top))]
    for path, name, line, size in rows:
        print(f"{size:5d}  {path}:{line}  {name}")
    sys.exit(1 if rows else 0)
