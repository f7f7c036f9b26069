"""The one table/format helper: cell text and Markdown tables."""

import math

import pytest

from intvit.tables import format_value, markdown_cell, markdown_table, replace_between


def test_format_value_by_type():
    assert format_value(None) == ""
    assert (format_value(True), format_value(False)) == ("yes", "no")
    assert format_value(12345678) == "12345678"
    assert format_value(1 / 3) == "0.3333" and format_value(1 / 3, ".2f") == "0.33"
    assert format_value(math.nan) == "nan" and format_value(-math.inf) == "-inf"
    assert format_value({"a": [1, 2]}) == '{"a": [1, 2]}'
    assert format_value("x") == "x"


def test_markdown_cell_stays_one_cell():
    assert markdown_cell("a|b\nc") == "a\\|b c"
    assert markdown_cell(0.5) == "0.5" and markdown_cell(81.234, ".2f") == "81.23"
    assert markdown_cell(None) == ""


def test_markdown_table_rows_and_alignment():
    table = markdown_table(["name", "ms", "note"], [["a", "1.0", ""], ["b", 2]], align="lr")
    assert table.split("\n") == ["| name | ms | note |", "|---|---:|---|",
                                 "| a | 1.0 |  |", "| b | 2 |"]
    assert markdown_table(["x"], [], align="c") == "| x |\n|:---:|"


@pytest.mark.parametrize("align", ["lrx", "lrrr"])
def test_markdown_table_rejects_bad_alignment(align):
    with pytest.raises(ValueError, match="align"):
        markdown_table(["a", "b", "c"], [], align=align)


def test_replace_between(tmp_path):
    path = tmp_path / "README.md"
    path.write_text("head\n<!-- s -->\nold\n<!-- e -->\ntail\n")
    replace_between(path, "<!-- s -->", "<!-- e -->", "new")
    assert path.read_text() == "head\n<!-- s -->\nnew\n<!-- e -->\ntail\n"
    with pytest.raises(ValueError, match="markers"):
        replace_between(path, "<!-- missing -->", "<!-- e -->", "x")
