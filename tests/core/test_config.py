"""Every configuration error names the file, the key path and (where known) the
line; unknown keys and kinds get the closest valid name."""

from __future__ import annotations

from pathlib import Path

import irqbypass
import irqbypass.plugin
import pytest
from irqbypass._config import load_config, parse_config

PAIR = """\
[[producers]]
name = "p0"
kind = "mock"
token = "t0"
irq = 5
options = { count = 3 }

[[consumers]]
name = "c0"
kind = "logging"
token = "t0"
"""


def error_of(text: str | bytes) -> irqbypass.ConfigError:
    with pytest.raises(irqbypass.ConfigError) as info:
        parse_config(text, file="topo.toml")
    return info.value


def test_valid_config_is_typed() -> None:
    config = parse_config(PAIR + '[run]\nduration = 2\n[plugins]\nblock = ["x"]\n', file="t")
    (p,) = config.producers
    assert (p.name, p.kind, p.token, p.irq, p.bypass, dict(p.options)) == (
        "p0",
        "mock",
        "t0",
        5,
        True,
        {"count": 3},
    )
    assert config.duration == 2.0 and config.plugins.block == ("x",)
    assert config.plugins.load is None and config.token_names() == ["t0"]


@pytest.mark.parametrize(
    ("text", "key", "line", "problem"),
    [
        (
            "[[producers]]\nname='a'\nkind='mock'\ntoken='t'\nirqq=1\n",
            "producers[0].irqq",
            5,
            "unknown key 'irqq'; did you mean 'irq'?",
        ),
        ("[plugin]\n", "plugin", 1, "did you mean 'plugins'?"),
        (
            "[[producers]]\nname='a'\nkind='mock'\ntoken='t'\nirq=-1\n",
            "producers[0].irq",
            5,
            "expected an integer from 0 to 2147483647, got int -1",
        ),
        (
            "[[producers]]\nname='a'\nkind='mock'\ntoken='t'\nirq=99999999999\n",
            "producers[0].irq",
            5,
            "expected an integer",
        ),
        (
            "[[producers]]\nname='a'\nkind='mock'\ntoken='t'\nirq='5'\n",
            "producers[0].irq",
            5,
            "got str '5'",
        ),
        (
            "[[producers]]\nname='a'\nkind='mock'\n",
            "producers[0]",
            1,
            "missing required key 'token'",
        ),
        (
            "[[consumers]]\nname='a b'\nkind='x'\ntoken='t'\n",
            "consumers[0].name",
            2,
            "is not a valid name",
        ),
        (
            "[[consumers]]\nname=1\nkind='x'\ntoken='t'\n",
            "consumers[0].name",
            2,
            "expected a string, got int 1",
        ),
        (
            "[[consumers]]\nname='a'\nkind='x'\ntoken='t'\nbypass='no'\n",
            "consumers[0].bypass",
            5,
            "expected true or false",
        ),
        (
            "[[consumers]]\nname='a'\nkind='x'\ntoken='t'\noptions=3\n",
            "consumers[0].options",
            5,
            "expected a table",
        ),
        ("producers = 3\n", "producers", 1, "expected an array of tables"),
        ("producers = [1]\n", "producers[0]", None, "expected a table"),
        ("[run]\nduration = -1\n", "run.duration", 2, "out of range"),
        ("[run]\nduration = inf\n", "run.duration", 2, "out of range"),
        ("[plugins]\nblock = 'x'\n", "plugins.block", 2, "expected a list of strings"),
        ("[plugins]\nstrict = 1\n", "plugins.strict", 2, "expected true or false"),
        (
            PAIR + "[[producers]]\nname='p0'\nkind='mock'\ntoken='t1'\n",
            "producers[1].name",
            13,
            "duplicate name 'p0'",
        ),
        (
            PAIR + "[[consumers]]\nname='c1'\nkind='logging'\ntoken='t0'\n",
            "consumers[1].token",
            15,
            "token 't0' is already used by consumer 'c0'",
        ),
    ],
)
def test_validation_errors(text: str, key: str, line: int | None, problem: str) -> None:
    error = error_of(text)
    assert error.file == "topo.toml"
    assert error.key == key
    assert error.line == line
    assert problem in error.problem
    assert str(error).startswith(f"topo.toml{'' if line is None else f':{line}'}: {key}: ")


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("x = \n", 1, "invalid TOML"),
        ("[[producers]]\nname = 'a\n", 2, "invalid TOML"),
        (b"name = 'caf\xe9'\n", 1, "not UTF-8"),
        (b"ok = 1\n\xff\n", 2, "not UTF-8"),
        ("a = " + "[" * 10000 + "]" * 10000, None, "invalid TOML"),
        ("a = 1\na = 2\n", 2, "invalid TOML"),
    ],
)
def test_syntax_errors(text: str | bytes, line: int | None, problem: str) -> None:
    error = error_of(text)
    assert error.line == line and problem in str(error) and error.file == "topo.toml"


@pytest.mark.parametrize(
    ("text", "key", "line", "problem"),
    [
        # the likeliest typo of all: an entry's array header in the singular
        (PAIR + "\n[[consumer]]\nname = 'c1'\n", "consumer", 13, "did you mean 'consumers'?"),
        # a [run] key written above every table, where it is a key of the file
        ("# topology\nduration = 5\n" + PAIR, "duration", 2, "unknown key 'duration'"),
        ("[[producer]]\nname = 'p'\n" + PAIR, "producer", 1, "did you mean 'producers'?"),
    ],
    ids=["array-header", "top-level-key", "array-header-first"],
)
def test_an_unknown_key_of_the_file_itself_has_its_line(
    text: str, key: str, line: int, problem: str
) -> None:
    """An unknown key of the file itself is found where it is written: as an
    array of tables' header, or as a key above every table (before: only a
    [table] header was looked for, so these had no line at all)."""
    error = error_of(text)
    assert (error.key, error.line) == (key, line), str(error)
    assert problem in error.problem


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("# t\nrun = { duration = -1 }\n", "run.duration", 2),
        ("# t\nrun.duration = -1\n", "run.duration", 2),
        ("# t\n\nplugins = { load = 'x' }\n", "plugins.load", 3),
    ],
    ids=["inline-table", "dotted-key", "inline-plugins"],
)
def test_a_section_written_as_a_key_has_its_line(text: str, key: str, line: int) -> None:
    """[run] or [plugins] written as a key of the file (an inline table, or
    dotted keys) rather than a [header]: an error in it names its line
    (before: none, only a [run] header was looked for)."""
    error = error_of(text)
    assert (error.key, error.line) == (key, line), str(error)


def test_an_entry_s_unknown_sub_table_has_its_line() -> None:
    """[producers.option] (for [producers.options]) below an entry: the error
    names that header's line, not the entry's first (before: line 1 here, the
    entry's header, four lines above the typo)."""
    error = error_of(
        "[[producers]]\nname='a'\nkind='mock'\ntoken='t'\n[producers.option]\nrate=1\n"
        "\n[[producers]]\nname='b'\nkind='mock'\ntoken='t2'\n[producers.optoins]\nrate=1\n"
    )
    assert [(e.key, e.line) for e in error.errors] == [
        ("producers[0].option", 5),
        ("producers[1].optoins", 12),
    ], str(error)


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"], ids=["LS", "PS", "NEL"])
def test_a_unicode_line_separator_in_a_comment_or_string_moves_no_line(separator: str) -> None:
    """TOML ends a line at LF only: a U+2028 (text pasted from a web page or a
    PDF) in a comment or a string is no line break, so every error keeps its
    own line (before: str.splitlines() counted one more line from there on, so
    the error named the line below the key, and an unclosed table's "end of
    document" a line past the end)."""
    head = f"# pasted{separator}comment\n[plugins.audit]\nnote = 'a{separator}b'\n"
    error = error_of(head + "[[producers]]\nname = 'p'\nkind = 'mock'\ntoken = 't'\nirq = -1\n")
    assert (error.key, error.line) == ("producers[0].irq", 8)
    error = error_of(head + "[[producers]]\nname = 'p")
    assert error.line == 5 and "invalid TOML" in error.problem
    config = parse_config(
        f"# a{separator}b\n[[producers]]\nname = 'p'\nkind = 'mock'\ntoken = 't'\n"
    )
    assert config.error("producers[0].token", "x").line == 5


def test_an_option_s_line_is_never_a_comment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An old value commented out above the live one (as one keeps it while
    trying another): the error names the live line (before: the comment's,
    which the option's search matched first)."""
    from irqbypass.cli import main

    path = tmp_path / "t.toml"
    path.write_text(
        PAIR.replace(
            "options = { count = 3 }", "# options = { rate = 100.0 }\noptions = { rate = -5.0 }"
        )
    )
    assert main(["check", str(path)]) == 1
    said = capsys.readouterr().err
    assert f"{path}:7: producers[0].options.rate: -5.0 is below the minimum" in said, said
    config = load_config(path)
    assert config.error("producers[0].options.rate", "x").line == 7


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(irqbypass.ConfigError, match="cannot read the file") as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.file and info.value.file.endswith("nope.toml")


def test_options_reader_errors_name_file_and_key() -> None:
    opts = irqbypass.plugin.Options(
        {"rate": "fast", "count": 5, "burts": 2}, where="producers[0].options", file="f.toml"
    )
    with pytest.raises(irqbypass.ConfigError) as info:
        opts.get_float("rate", 1.0)
    assert str(info.value) == "f.toml: producers[0].options.rate: expected a number, got str 'fast'"
    assert opts.get_int("count", 1, min=0) == 5
    opts.get_int("burst", 1)
    with pytest.raises(irqbypass.ConfigError, match="unknown option 'burts'; did you mean 'burst'"):
        opts.finish()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda o: o.get_int("n", 0, max=10), "above the maximum 10"),
        (lambda o: o.get_int("n", 0, min=20), "below the minimum 20"),
        (lambda o: o.get_bool("n", False), "expected true or false"),
        (lambda o: o.get_str("n"), "expected a string"),
    ],
)
def test_options_reader_types_and_ranges(call: object, message: str) -> None:
    opts = irqbypass.plugin.Options({"n": 15})
    with pytest.raises(irqbypass.ConfigError, match=message):
        call(opts)  # type: ignore[operator]


def test_options_bool_is_not_an_int() -> None:
    with pytest.raises(irqbypass.ConfigError, match="expected an integer, got bool True"):
        irqbypass.plugin.Options({"n": True}).get_int("n", 0)
