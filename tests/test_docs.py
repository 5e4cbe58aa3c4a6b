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
