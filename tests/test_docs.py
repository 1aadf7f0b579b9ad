"""The documentation cannot drift: the settings table is generated and checked, links resolve."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path

import pytest

from heygem.settings import Settings, env_name, flag_name

PROJECT = Path(__file__).resolve().parent.parent
README = PROJECT / "README.md"
CONFIGURATION = PROJECT / "docs" / "configuration.md"
MODELARTS = PROJECT / "docs" / "deployment-modelarts.md"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.fixture(scope="module")
def config_table():
    spec = importlib.util.spec_from_file_location("config_table", PROJECT / "scripts" / "config_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_generated_tables_are_up_to_date(config_table, capsys):
    code = config_table.main(["--check"])
    assert code == 0, capsys.readouterr().out


@pytest.mark.parametrize("doc", [README, CONFIGURATION], ids=lambda p: p.name)
def test_every_setting_is_documented(doc):
    text = doc.read_text()
    for f in dataclasses.fields(Settings):
        row = f"| `{env_name(f.name)}` | `{flag_name(f.name)}` |"
        assert row in text, f"{doc.name} does not list {f.name}"


def test_every_setting_has_a_comment_and_a_section(config_table):
    docs = config_table.field_docs()
    assert [d.name for d in docs] == [f.name for f in dataclasses.fields(Settings)]
    for d in docs:
        assert d.comment and d.section, d


def test_defaults_in_the_table_are_the_real_ones(config_table):
    rows = {d.name: d for d in config_table.field_docs()}
    assert rows["port"].default == "`7860`"
    assert rows["drain_seconds"].default == f"`{Settings().drain_seconds}`"
    assert rows["warmup"].default == "`true`"
    assert rows["models_dir"].default == "*unset*"
    assert rows["data_dir"].default == "*the project folder*"  # not this machine's path
    assert rows["input_roots"].type_name == "list"


def test_check_reports_a_stale_file_and_the_writer_fixes_it(config_table, tmp_path):
    stale = tmp_path / "doc.md"
    block = config_table.render(config_table.field_docs())
    stale.write_text("intro\n\n" + block.replace("`7860`", "`1234`") + "\n\noutro\n")
    assert config_table.main(["--check"], targets=(stale,)) == 1
    assert "`1234`" in stale.read_text()  # --check never writes
    assert config_table.main([], targets=(stale,)) == 0
    assert config_table.main(["--check"], targets=(stale,)) == 0
    text = stale.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\noutro\n") and "`7860`" in text


def test_missing_markers_are_an_error(config_table, tmp_path, capsys):
    plain = tmp_path / "doc.md"
    plain.write_text("no table here\n")
    assert config_table.main(["--check"], targets=(plain,)) == 2
    assert "markers" in capsys.readouterr().err


def test_a_setting_without_a_comment_is_refused(config_table, tmp_path):
    source = (PROJECT / "heygem" / "settings.py").read_text()
    line = next(ln for ln in source.splitlines() if ln.strip().startswith("batch_size: int"))
    uncommented = source.replace(line, line.split("  #")[0])
    broken = tmp_path / "settings.py"
    broken.write_text(uncommented)
    with pytest.raises(ValueError, match="batch_size"):
        config_table.field_docs(broken)


def test_readme_keeps_the_two_quick_start_commands():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1]
    commands = re.findall(r"```bash\n(.+?)\n```", quick.split("\n## ", 1)[0], re.S)
    assert commands[:2] == ["bash scripts/setup.sh && python3 app.py", "bash scripts/test.sh"]
    assert "](docs/screenshot.png)" in text.split("## Quick start", 1)[0]


@pytest.mark.parametrize("doc", [README, CONFIGURATION, MODELARTS], ids=lambda p: p.name)
def test_relative_links_point_at_files(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to missing files: {missing}"


def test_modelarts_guide_matches_the_contract():
    text = MODELARTS.read_text()
    assert "port **8080**" in text and "**`/health`**" in text
    drain = Settings().drain_seconds
    assert f"`HEYGEM_DRAIN_SECONDS` (default **{drain:g} s**)" in text
    assert drain + 10 < 90  # drain + uvicorn's graceful close fit the legacy 90 s stop budget
    for topic in ("SWR", "OBS", "sticky", "/ready", "idempotency_key", "40 s", "12 MB"):
        assert topic.lower() in text.lower(), topic
