"""Editions of the course notebooks for a classroom: the student edition leaves the solutions out.

The notebooks mark each solution with nbgrader's markers, so a teacher who grades with nbgrader
takes them as they are::

    def recalls_by_hand(S, text_to_image):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

:func:`student_source` replaces each marked region, as nbgrader's ``ClearSolutions`` does, by a
stub at the marker's indentation: ``raise NotImplementedError("write recalls_by_hand here")`` in
code (named after the enclosing function), ``YOUR ANSWER HERE`` in markdown. Cells tagged
``instructor`` (worked answers to the exercises) are left out of the student edition and kept in
the instructor edition. The check cell after each build-it cell (:func:`rsretrieval.notebook.check`)
falls back to the library's result while a solution is missing, so a student edition runs top to
bottom before every cell is written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rsretrieval.errors import NotebookFormatError

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
INSTRUCTOR_TAG = "instructor"
EDITIONS = ("student", "instructor")
_DEF = re.compile(r"^(\s*)(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(")


def student_source(source: str, cell_type: str = "code", *, where: str = "a cell") -> str:
    """``source`` with every solution region replaced by a stub (markers must pair up)."""
    lines = source.split("\n")
    out: list[str] = []
    inside: int | None = None
    for k, line in enumerate(lines):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside is not None:
                raise ValueError(f"{where}: line {k + 1} opens a solution inside another (line {inside + 1})")
            inside = k
            indent = line[: len(line) - len(line.lstrip())]
            if cell_type == "code":
                what = _enclosing_function(lines[:k], indent)
                out.append(f'{indent}raise NotImplementedError("write {what} here")')
            else:
                out.append(f"{indent}YOUR ANSWER HERE")
        elif stripped == END:
            if inside is None:
                raise ValueError(f"{where}: line {k + 1} closes a solution that was never opened")
            inside = None
        elif inside is None:
            out.append(line)
    if inside is not None:
        raise ValueError(f"{where}: the solution opened on line {inside + 1} is never closed ({END})")
    return "\n".join(out)


def _enclosing_function(before: list[str], indent: str) -> str:
    for line in reversed(before):
        m = _DEF.match(line)
        if m and len(m.group(1)) < len(indent):
            return m.group(2)
    return "this step"


def has_solutions(source: str) -> bool:
    return any(line.strip() == BEGIN for line in source.split("\n"))


def is_answer(cell: Any) -> bool:
    """Whether ``cell`` is a worked answer (tagged ``instructor``)."""
    return INSTRUCTOR_TAG in cell.get("metadata", {}).get("tags", [])


def without_answers(notebook: Any) -> Any:
    """A copy of ``notebook`` without its worked answers (cells tagged ``instructor``): the course as
    a reader runs it, solutions of the build-it cells included."""
    import copy

    nb = copy.deepcopy(notebook)
    nb.cells = [c for c in nb.cells if not is_answer(c)]
    return nb


def make_edition(notebook: Any, edition: str) -> Any:
    """A copy of ``notebook`` (an nbformat node) as ``edition`` is handed out."""
    import copy

    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {', '.join(EDITIONS)}, not {edition!r}")
    nb = copy.deepcopy(notebook)
    if edition == "instructor":
        return nb
    cells = []
    for k, cell in enumerate(nb.cells):
        if is_answer(cell):
            continue
        if has_solutions(cell.source):
            cell.source = student_source(cell.source, cell.cell_type, where=f"cell {k}")
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    nb.cells = cells
    return nb


def write_edition(edition: str, out_dir: str | Path, notebooks: list[Path] | None = None) -> list[Path]:
    """Write ``edition`` of the course notebooks (default: all) into ``out_dir``; returns the files.

    Refused, before anything is written, where a file written would replace a course notebook (the
    sources' folder as ``out_dir``): the student edition there would lose the solutions. Every notebook
    is made into its edition before the first is written, so a bad one (named) leaves nothing half done."""
    import nbformat

    from rsretrieval.paths import list_notebooks

    if edition not in EDITIONS:
        raise ValueError(f"edition must be one of {', '.join(EDITIONS)}, not {edition!r}")
    sources = list(notebooks or list_notebooks())
    out = Path(out_dir)
    protected = {p.resolve() for p in [*list_notebooks(), *sources]}
    protected |= {p.with_suffix(".py") for p in protected}  # the jupytext pairs
    clash = next((out / p.name for p in sources if (out / p.name).resolve() in protected), None)
    if clash is not None:
        raise FileExistsError(f"writing the {edition} edition to {out} would replace the course notebook {clash} "
                              f"(and its solutions); choose another folder, e.g. build/{edition}")
    editions = []
    for path in sources:
        try:
            editions.append(make_edition(nbformat.read(path, as_version=4), edition))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
            raise NotebookFormatError(f"{path}: cannot make its {edition} edition: {str(exc).splitlines()[0][:200]}"
                                      " (fix the notebook, or run `make notebooks` to pair it again from its .py)"
                                      ) from None
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path, nb in zip(sources, editions, strict=True):
        target = out / path.name
        tmp = target.with_name(f".{target.name}.tmp")
        nbformat.write(nb, tmp)
        tmp.replace(target)
        written.append(target)
    return written
