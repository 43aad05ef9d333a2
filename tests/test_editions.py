"""The student edition: every solution replaced by a stub that says what to write, and it still runs."""

import json

import nbformat
import pytest

from rsretrieval.course import list_notebooks, run_notebook
from rsretrieval.editions import BEGIN, END, make_edition, student_source, write_edition

CODE = f'''def recall(x):
    """doc"""
    {BEGIN}
    y = x + 1
    return y
    {END}


def other():
    if True:
        {BEGIN}
        pass
        {END}
'''


def test_a_solution_becomes_a_stub_named_after_its_function():
    out = student_source(CODE)
    assert 'y = x + 1' not in out and BEGIN not in out and END not in out
    assert '    raise NotImplementedError("write recall here")' in out.split("\n")
    assert '        raise NotImplementedError("write other here")' in out.split("\n")
    assert student_source(f"Why?\n{BEGIN}\nBecause.\n{END}", "markdown") == "Why?\nYOUR ANSWER HERE"
    for broken, says in ((f"{BEGIN}\nx", "never closed"), (f"x\n{END}", "never opened"),
                         (f"{BEGIN}\n{BEGIN}\n{END}", "inside another")):
        with pytest.raises(ValueError, match=says):
            student_source(broken)


def test_the_student_edition_leaves_no_solution_and_drops_instructor_cells(tmp_path):
    written = write_edition("student", tmp_path / "student")
    assert [p.name for p in written] == [p.name for p in list_notebooks()]
    stubs = 0
    for path, original in zip(written, list_notebooks(), strict=True):
        ours, theirs = nbformat.read(path, as_version=4), nbformat.read(original, as_version=4)
        text = "\n".join(c.source for c in ours.cells)
        assert BEGIN not in text and END not in text
        solution_lines = set()
        for cell in theirs.cells:
            inside = False
            for line in cell.source.split("\n"):
                if line.strip() in (BEGIN, END):
                    inside = line.strip() == BEGIN
                elif inside and line.strip():
                    solution_lines.add(line)
        elsewhere = {line for c in theirs.cells for line in student_source(c.source, c.cell_type).split("\n")}
        leaked = (solution_lines - elsewhere) & set(text.split("\n"))
        assert not leaked, f"{path.name} still holds solution code: {sorted(leaked)[:3]}"
        assert not any("instructor" in c.metadata.get("tags", []) for c in ours.cells)
        stubs += text.count("raise NotImplementedError(\"write ")
    assert stubs >= 3
    nb = nbformat.read(list_notebooks()[0], as_version=4)
    assert make_edition(nb, "instructor") == nb


@pytest.mark.notebook
def test_every_exercise_has_a_worked_answer_in_the_instructor_edition():
    import re

    for path in list_notebooks():
        nb = nbformat.read(path, as_version=4)
        exercises = next((c.source for c in nb.cells if c.cell_type == "markdown"
                          and c.source.lstrip().startswith("## Exercises")), None)
        assert exercises is not None, f"{path.name} has no exercises"
        asked = [int(n) for n in re.findall(r"^(\d+)\. ", exercises, re.M)]
        answer_cells = [c for c in nb.cells if "instructor" in c.metadata.get("tags", [])]
        answered = [int(n) for c in answer_cells if c.cell_type == "markdown"
                    for n in re.findall(r"^\*\*(\d+)\. ", c.source, re.M)]
        assert asked and answered == asked, f"{path.name}: exercises {asked}, worked answers {answered}"
        assert any(c.cell_type == "code" for c in answer_cells), f"{path.name}: no answer computes anything"


def test_the_course_run_can_leave_the_worked_answers_out(tmp_path):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nb.cells = [nbformat.v4.new_code_cell("import json, os\nran = ['lesson']"),
                nbformat.v4.new_code_cell("ran.append('answer')", metadata={"tags": ["instructor"]}),
                nbformat.v4.new_code_cell("open('ran.json', 'w').write(json.dumps(ran))")]
    path = tmp_path / "toy.ipynb"
    nbformat.write(nb, path)
    for answers, expected in ((False, ["lesson"]), (True, ["lesson", "answer"])):
        run_notebook(path, tmp_path / f"out-{answers}", html=False, answers=answers)
        assert json.loads((tmp_path / "ran.json").read_text()) == expected
    assert sorted(p.name for p in (tmp_path / "out-False").iterdir()) == ["toy", "toy.ipynb"]  # no copy left


def test_an_edition_is_never_written_over_the_sources(tmp_path, capsys):
    from rsretrieval.cli import main

    sources = list_notebooks()
    before = {p: p.read_bytes() for p in sources}
    for edition in ("student", "instructor"):
        with pytest.raises(FileExistsError, match=f"would replace the course notebook .*{sources[0].name}"):
            write_edition(edition, sources[0].parent)
    assert main(["course", "--edition", "student", "--out", str(sources[0].parent)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: writing the student edition to")
    assert {p: p.read_bytes() for p in sources} == before  # the solutions are all still there


def test_a_bad_notebook_is_named_and_nothing_is_half_written(tmp_path):
    from rsretrieval.errors import NotebookFormatError

    not_json = tmp_path / "broken.ipynb"
    not_json.write_text("{ not a notebook")
    unclosed = tmp_path / "unclosed.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = 1\n{BEGIN}\ny = 2")])
    nbformat.write(nb, unclosed)
    for bad, why in ((not_json, "cannot make its student edition"), (unclosed, "never closed")):
        with pytest.raises(NotebookFormatError, match=f"{bad.name}: .*{why}"):
            write_edition("student", tmp_path / "out", [list_notebooks()[0], bad])
        assert not (tmp_path / "out").exists()


@pytest.mark.notebook
def test_an_edition_runs_as_the_course_with_its_claims_in_the_summary(tmp_path, capsys):
    """What `make classroom` does, for one notebook: the student edition executed by `course --notebooks`;
    it runs through, and each of the student's checks says it is not done yet."""
    from rsretrieval.cli import main

    assert main(["course", "--edition", "student", "--out", str(tmp_path / "student")]) == 0
    assert main(["course", "--notebooks", str(tmp_path / "student"), "--only", "01", "--smoke",
                 "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [nb["notebook"] for nb in summary["notebooks"]] == ["01_zero_shot"] and summary["status"] == "ok"
    assert {r["verdict"] for r in summary["claims"]} == {"not measured"}  # zero-shot alone settles none of them
    records = json.loads(next((tmp_path / "run").rglob("records.json")).read_text())
    assert records["checks"] == {"recalls_by_hand": "not done"}
    executed = nbformat.read(tmp_path / "run" / "01_zero_shot.ipynb", as_version=4)
    said = "\n".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert "not done yet: recalls_by_hand still raises NotImplementedError" in said and "Traceback" not in said
    (tmp_path / "empty").mkdir()
    capsys.readouterr()
    assert main(["course", "--notebooks", str(tmp_path / "empty")]) == 1
    assert "no course notebooks (NN_name.ipynb) in" in capsys.readouterr().err
