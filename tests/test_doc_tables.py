"""The tables of plug-ins in docs/ are generated from the registry, and the committed docs match it."""
from __future__ import annotations

from pathlib import Path

import pytest

from lightpipe.cli import doc_tables


def test_the_docs_tables_match_the_registry() -> None:
    problems = doc_tables.stale()
    assert not problems, "\n".join(problems)


def test_blocks_are_rewritten_and_nothing_else(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Sinks\n\nBefore.\n\n<!-- registry:sinks -->\nold table\n<!-- /registry:sinks -->\n\nAfter.\n"
                    "<!-- registry:sinks:details -->\n<!-- /registry:sinks:details -->\n")
    assert doc_tables.main(["--check", "--docs", str(tmp_path)]) == 1
    assert doc_tables.write(tmp_path) == [page]
    text = page.read_text()
    assert text.startswith("# Sinks\n\nBefore.\n\n<!-- registry:sinks -->\n| `use:` | what it does |\n")
    assert "| [`nexus`](#nexus-sink) | Write one NeXus/HDF5 file per scan" in text
    assert "old table" not in text and "\n\nAfter.\n" in text
    assert "### `nexus` sink\n" in text and "| `compression` | `\"bitshuffle\" \\| \"gzip\" \\| \"none\"` |" in text
    assert doc_tables.write(tmp_path) == []  # idempotent


def test_check_names_the_missing_groups_and_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "page.md").write_text("<!-- registry:stages -->\n<!-- /registry:stages -->\n")
    assert doc_tables.main(["--check", "--docs", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"run `{doc_tables.WRITE_COMMAND}`" in err
    for group in ("sources", "sinks", "engines"):
        assert f"no page has a table of {group}" in err


def test_an_unknown_block_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown registry block 'stage'"):
        doc_tables.render("stage")
