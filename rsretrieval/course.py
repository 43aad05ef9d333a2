"""Run the course: every notebook, in order, with papermill, into one output folder.

Each notebook gets its own ``OUTPUT_DIR`` (``<out>/<notebook>/``) where it writes
``records.json``; the runner collects those numbers and each notebook's runtime into
``<out>/summary.json``, and exports each executed notebook to HTML.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from rsretrieval.claims import claims_table, course_records
from rsretrieval.errors import NotebookFailed
from rsretrieval.files import atomic_write_json
from rsretrieval.paths import NOTEBOOK_DIR, list_notebooks  # noqa: F401  (this module's names too)

_logger = logging.getLogger(__name__)


def notebook_parameters(path: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell."""
    import papermill

    return {k: v["default"] for k, v in papermill.inspect_notebook(str(path)).items()}


def run_notebook(
    path: str | Path,
    out_dir: str | Path,
    parameters: dict[str, Any] | None = None,
    *,
    kernel: str = "python3",
    cell_timeout: int | None = None,
    html: bool = True,
    answers: bool = True,
) -> dict[str, Any]:
    """Execute one notebook; returns ``{"notebook", "seconds", "records", "output"}``.

    Only parameters the notebook declares are passed (others are dropped, with a log line).
    ``OUTPUT_DIR`` is set to ``out_dir/<stem>``. ``answers=False`` leaves the worked answers
    (``instructor`` cells) out.

    Raises:
        NotebookFailed: naming the notebook, the failing cell's index and the error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path = Path(path)
    nb_out = Path(out_dir) / path.stem
    nb_out.mkdir(parents=True, exist_ok=True)
    declared = notebook_parameters(path)
    params = {k: v for k, v in (parameters or {}).items() if k in declared}
    dropped = sorted(set(parameters or {}) - set(params))
    if dropped:
        _logger.info("%s does not take %s", path.name, dropped)
    if "OUTPUT_DIR" in declared:
        params["OUTPUT_DIR"] = str(nb_out.resolve())
    executed = Path(out_dir) / path.name
    source = path
    if not answers:
        import nbformat

        from rsretrieval.editions import without_answers

        source = Path(out_dir) / f".{path.stem}.source.ipynb"
        nbformat.write(without_answers(nbformat.read(path, as_version=4)), source)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(
            str(source), str(executed), parameters=params, kernel_name=kernel, cwd=str(path.parent),
            progress_bar=False, execution_timeout=cell_timeout, log_output=False,
            # the kernel's own start-up log (e.g. "running over TCP without encryption" for a kernel on
            # localhost) is not the learner's business; errors in cells still surface as NotebookFailed
            extra_arguments=["--IPKernelApp.log_level=ERROR"],
        )
    except PapermillExecutionError as exc:
        raise NotebookFailed(
            f"{path.name}: cell {exc.cell_index} (execution count {exc.exec_count}) raised "
            f"{exc.ename}: {exc.evalue}. The executed notebook with the traceback is {executed}."
        ) from exc
    finally:
        if source != path:
            source.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    if html:
        _export_html(executed)
    records_file = nb_out / "records.json"
    records = json.loads(records_file.read_text()) if records_file.exists() else {}
    return {"notebook": path.stem, "seconds": round(seconds, 1), "records": records, "output": str(executed)}


def _export_html(notebook: Path) -> Path:
    import nbconvert
    import nbformat

    templates = Path(__file__).parent / "templates"  # "course": JupyterLab's, with the figures' alt text
    exporter = nbconvert.HTMLExporter(template_name="course", extra_template_basedirs=[str(templates)])
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target


def run_course(
    out_dir: str | Path = "build/course",
    parameters: dict[str, Any] | None = None,
    *,
    notebooks: list[Path] | None = None,
    cell_timeout: int | None = None,
    answers: bool = True,
) -> dict[str, Any]:
    """Run every course notebook in order; stop at the first failure.

    ``summary.json`` is written after every notebook, so a failed run still shows what ran; its
    ``claims`` are :func:`rsretrieval.claims.claims_table` of the records so far.
    ``answers=False`` leaves the worked answers out (``make course``: the course as a reader runs it).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"parameters": parameters or {}, "notebooks": [], "status": "running"}
    start = time.perf_counter()
    os.environ.setdefault("MPLBACKEND", "Agg")
    if notebooks is not None and not notebooks:
        raise ValueError("no notebooks to run (an empty list); pass None for all of them")
    for nb in list_notebooks() if notebooks is None else notebooks:
        print(f"running {nb.name} ...", flush=True)
        try:
            entry = run_notebook(nb, out, parameters, cell_timeout=cell_timeout, answers=answers)
        except NotebookFailed as exc:
            summary.update(status="failed", error=str(exc), total_seconds=round(time.perf_counter() - start, 1))
            _write(out / "summary.json", summary)
            raise
        print(f"  done in {entry['seconds']:.0f} s", flush=True)
        summary["notebooks"].append(entry)
        summary["claims"] = claims_table(course_records(summary))  # the papers' claims beside ours, so far
        _write(out / "summary.json", summary)
    summary.update(status="ok", total_seconds=round(time.perf_counter() - start, 1))
    _write(out / "summary.json", summary)
    return summary


def _write(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, default=str)
