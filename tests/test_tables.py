"""The one table renderer: markdown for README and reports, aligned text for the CLI."""

from __future__ import annotations

import pytest

from rela_fast.tables import render_table


def test_markdown_is_unpadded_with_alignment_in_the_rule():
    text = render_table(("run", "acc", "steps"), [("BYOL", "50.00", 10), ("ReLA | 20%", "61.23", 2)], align="lrr")
    assert text.splitlines() == ["| run | acc | steps |", "|---|---:|---:|", "| BYOL | 50.00 | 10 |",
                                 "| ReLA \\| 20% | 61.23 | 2 |"]


def test_text_pads_columns_and_right_aligns_numbers():
    lines = render_table(("name", "n"), [("a", 1), ("longer", 12345)], align="lr", fmt="text").splitlines()
    assert lines == ["name        n", "------  -----", "a           1", "longer  12345"]
    assert len({len(ln) for ln in lines}) == 1


def test_headerless_text_and_trailing_space_stripped():
    lines = render_table(None, [("key", "value"), ("k", "")], fmt="text").splitlines()
    assert lines == ["key  value", "k"]


def test_empty_and_bad_shapes():
    assert render_table(("a", "b"), [], fmt="markdown") == "| a | b |\n|---|---|"
    with pytest.raises(ValueError, match="row 1 has 1 cells"):
        render_table(("a", "b"), [("x", "y"), ("z",)])
    with pytest.raises(ValueError, match="align"):
        render_table(("a", "b"), [("x", "y")], align="lc")
    with pytest.raises(ValueError, match="fmt"):
        render_table(("a",), [("x",)], fmt="html")
