"""The README's set-up commands are the ones CI runs, and every command has help with an example."""

from __future__ import annotations

import re

from tests.cli import ROOT, run


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must open with a bash block of set-up commands"
    return [ln for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_opens_with_two_setup_commands():
    cmds = _readme_commands()
    assert len(cmds) == 2
    assert "torch==2.13.0" in cmds[0] and "bbx " in cmds[0]
    assert "pytest" in cmds[1] and "[test]" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert _readme_commands()[1] in ci


def test_every_command_has_help_with_an_example():
    from bbx.cli import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert names
    for name in names:
        r = run(name, "--help")
        assert r.exit_code == 0, name
        assert "Example" in r.stdout, f"`bbx {name} --help` has no example"


def test_help_at_80_columns_reads_well():
    """Flags show no value type, fixed choices show the choices (or a name the help explains),
    arguments are FILE / [INPUTS]... in the usage line, and prose wraps to the width, not at the
    source's line breaks."""
    from bbx.cli import app

    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    for name in names:
        r = run(name, "--help", env={"COLUMNS": "80"})
        text = r.stdout
        assert "<bool>" not in text and "<str>" not in text and "<list[" not in text, (name, text)
        usage = next(ln for ln in text.splitlines() if "Usage:" in ln)
        assert "{" not in usage, usage
        assert max(len(ln) for ln in text.splitlines()) <= 80, name
        prose = []  # the description: lines between the usage and the first panel
        for ln in text.splitlines()[text.splitlines().index(usage) + 1 :]:
            if ln.startswith(("╭", "│")):
                break
            prose.append(ln.strip())
        for line, after in zip(prose, prose[1:]):
            if line and after and not line.startswith("bbx ") and not after.startswith("bbx "):
                assert len(line) >= 55, (name, line)  # a line that is followed by more of its paragraph is full
    assert "skip|stop" in run("extract", "--help", env={"COLUMNS": "80"}).stdout


def test_readme_model_tables_are_generated_from_the_catalog():
    """README's model and stage-norm tables are `bbx models --markdown`; if this fails, run
    `python -m bbx.catalog_docs README.md`."""
    from bbx.catalog_docs import markdown, readme_block

    block = readme_block((ROOT / "README.md").read_text())
    assert block is not None, "README has no generated model tables"
    assert block == markdown(), "README's model tables are stale"
    assert run("models", "--markdown").stdout == markdown()


def test_every_catalog_row_is_in_the_readme():
    from bbx import registry

    text = (ROOT / "README.md").read_text()
    rows = registry.checkpoints()
    assert all(f"| {r.alias} | {r.repo_id}{f' @ `{r.revision}`' if r.revision else ''} |" in text for r in rows)
