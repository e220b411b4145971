"""Placeholders: shell-quoted values, literal braces, shell syntax left alone."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from batchpool.spec import render_command
from batchpool.spec.placeholders import (
    UnknownPlaceholderError,
    UnsafePlaceholderError,
    check_template,
    placeholder_names,
    quoting_problem,
    render_text,
    render_value,
)


def test_values_are_shell_quoted() -> None:
    assert render_command("run --seed {index}", {"index": 7}) == "run --seed 7"
    assert render_command("echo {v}", {"v": "a b"}) == "echo 'a b'"
    assert render_command("echo {v}", {"v": ""}) == "echo ''"
    assert render_command("echo {v}", {"v": "it's"}) == "echo 'it'\"'\"'s'"
    assert render_command("m --a {alpha} --n {n}", {"alpha": 0.5, "n": 100}) == "m --a 0.5 --n 100"


def test_braces_and_shell_syntax() -> None:
    values = {"index": 3}
    assert render_command("echo {{index}} {index}", values) == "echo {index} 3"
    assert render_command("awk '{{print $1}}'", values) == "awk '{print $1}'"
    assert render_command("echo ${HOME} $HOME ${index}", values) == "echo ${HOME} $HOME ${index}"
    assert render_command("find . -exec rm {} + ; echo {a,b} { x }", values) == (
        "find . -exec rm {} + ; echo {a,b} { x }"
    )
    assert render_command("}{ }}", values) == "}{ }"


def test_unknown_placeholder_is_a_key_and_value_error() -> None:
    with pytest.raises(UnknownPlaceholderError) as info:
        render_command("run {index} {nope}", {"index": 1})
    assert info.value.name == "nope"
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "unknown placeholder {nope}"


def test_a_value_is_never_code(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    value = f"x; touch {target}"
    command = render_command("echo {v}", {"v": value})
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                            check=True, cwd=tmp_path)
    assert result.stdout == value + "\n"
    assert not target.exists()


@pytest.mark.parametrize("value", ["$(touch PWNED)", "`touch PWNED`", "a' ; touch PWNED ; '",
                                   "\"; touch PWNED; \"", "*", "a\nb", "{index}"])
def test_hostile_values_stay_literal(tmp_path: Path, value: str) -> None:
    command = render_command("printf %s {v}", {"v": value, "index": 1})
    result = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                            check=True, cwd=tmp_path)
    assert result.stdout == value
    assert not (tmp_path / "PWNED").exists()


def test_placeholder_names() -> None:
    names = list(placeholder_names("{a} {{b}} ${c} {d} {a} {1x} {e f}"))
    assert names == ["a", "d", "a"]


def test_render_text_does_not_quote() -> None:
    assert render_text("seed-{index}-{v}", {"index": 2, "v": "a b"}) == "seed-2-a b"


def test_render_value_keeps_types_for_whole_placeholders() -> None:
    values = {"index": 7, "alpha": 0.5, "task_id": "map[7]"}
    assert render_value("{index}", values) == 7
    assert render_value("seed-{index}", values) == "seed-7"
    assert render_value(["{alpha}", {"t": "{task_id}", "n": 3}], values) == [
        0.5, {"t": "map[7]", "n": 3}
    ]
    assert render_value(("{index}",), values) == (7,)
    assert render_value(None, values) is None
    with pytest.raises(UnknownPlaceholderError):
        render_value({"x": "{nope}"}, values)


def test_check_template() -> None:
    assert check_template("run {index} {alpha} {node}", True, {"alpha": [1]}) is None
    assert check_template("run {task_id} {job_id} {attempt} {node}", False, {}) is None
    index_problem = check_template("run {index}", False, {})
    assert index_problem is not None and "only defined for groups with" in index_problem
    problem = check_template("run {beta}", True, {"alpha": [1]})
    assert problem is not None
    assert "unknown placeholder {beta}" in problem
    assert "{alpha}" in problem and "{index}" in problem
    assert check_template("run {{beta}} ${beta}", False, {}) is None


@pytest.mark.parametrize(
    ("template", "phrase"),
    [
        ("echo '{v}'", "inside single quotes"),
        ('echo "{v}"', "inside double quotes"),
        ('echo "$(echo {v})"', "inside double quotes"),
        ("echo `echo {v}`", "inside backticks"),
        ("cat <<EOF\n{v}\nEOF", "inside a here-document"),
        ("echo \\{v}", "follows a backslash"),
        ("echo hi # {v}", "inside a # comment"),
    ],
)
def test_placeholders_where_quoting_would_be_undone_are_refused(template: str, phrase: str) -> None:
    problem = quoting_problem(template)
    assert problem is not None and phrase in problem
    with pytest.raises(UnsafePlaceholderError, match=phrase):
        render_command(template, {"v": "x"})


@pytest.mark.parametrize(
    "template",
    [
        "echo {v}",
        "echo --out=part{v}.json",
        "echo $(echo {v})",
        "echo \\' {v} \\'",
        "echo 'a b' \"c\" {v} '{{v}}'",
        "cat <<< {v}",
        "echo hi#{v}",
        "echo '#' {v}",
        "echo a # comment\necho {v}",
        "awk '{{print $1}}' {v}",
    ],
)
def test_placeholders_outside_quotes_are_fine(template: str) -> None:
    assert quoting_problem(template) is None


def test_why_quoted_placeholders_are_refused(tmp_path: Path) -> None:
    """What would happen without the check: the quoted value is unquoted again and runs."""
    value = "$(touch PWNED)"
    unsafe = 'echo "' + render_command("{v}", {"v": value}) + '"'
    subprocess.run(["/bin/sh", "-c", unsafe], capture_output=True, cwd=tmp_path, check=True)
    assert (tmp_path / "PWNED").exists()
    assert check_template('echo "{v}"', False, {"v": [value]}) is not None
    assert check_template('echo "{v}"', False, {"v": [value]}, shell=False) is None
