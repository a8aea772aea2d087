import json

import pytest

from symoe_agents.errors import InputError
from symoe_agents.inputs import as_questions, parse_questions, read_questions, read_questions_skipping


def test_jsonl_with_all_fields(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"id": "a", "question": "Q1?", "gold_answer": 5, "answer_format": "math", "source": "x"}\n\n{"question": "Q2?"}\n')
    qs = read_questions(p)
    assert [q.id for q in qs] == ["a", "2"]
    assert qs[0].gold_answer == "5" and qs[0].answer_format.value == "math"
    assert qs[0].metadata == {"source": "x"}


def test_upstream_json_array(tmp_path):
    p = tmp_path / "u.json"
    p.write_text(json.dumps([{"question": "Q?", "gold_answer": "A", "category": "law"}], indent=1))
    (q,) = read_questions(p)
    assert q.category == "law" and q.gold_answer == "A" and q.id == "1"


def test_reads_the_shipped_upstream_files():
    from conftest import UPSTREAM

    assert len(read_questions(UPSTREAM / "GPQA_train.json")) == 249


@pytest.mark.parametrize(
    "content, line, fragment",
    [
        ('{"question": "ok"}\n{"question": broken}\n', 2, "invalid JSON"),
        ('{"question": "ok"}\n{"id": "x"}\n', 2, "missing required field 'question'"),
        ('{"question": "a", "id": "1"}\n{"question": "b", "id": "1"}\n', 2, "duplicate id '1' (first on line 1)"),
        ('{"question": "a", "answer_format": "essay"}\n', 1, "unknown answer_format 'essay'"),
        ('{"question": ""}\n', 1, "non-empty string"),
        ("[1, 2]\n", None, "expected a JSON object"),
    ],
)
def test_bad_input_names_file_line_and_problem(tmp_path, content, line, fragment):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(InputError) as err:
        read_questions(p)
    msg = str(err.value)
    assert fragment in msg
    assert str(p) in msg
    if line:
        assert f"{p}:{line}:" in msg


def test_every_bad_line_is_reported_at_once(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('nope\n{"question": "fine"}\n{"id": 3}\n')
    with pytest.raises(InputError) as err:
        read_questions(p)
    assert [line for line, _ in err.value.problems] == [1, 3]


def test_empty_file_and_non_utf8(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text("  \n")
    with pytest.raises(InputError, match="empty"):
        read_questions(empty)
    latin = tmp_path / "l.jsonl"
    latin.write_bytes(b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    with pytest.raises(InputError, match=r"l.jsonl:2: bytes that are not UTF-8"):
        read_questions(latin)


def test_missing_file():
    with pytest.raises(InputError, match="file not found"):
        read_questions("/nonexistent/q.jsonl")


def test_api_inputs_accept_strings_dicts_and_reject_duplicates():
    qs = as_questions(["What?", {"id": "x", "question": "Why?"}])
    assert [q.id for q in qs] == ["1", "x"]
    with pytest.raises(InputError, match="duplicate"):
        as_questions([{"id": "2", "question": "a"}, "b"])
    with pytest.raises(InputError):
        parse_questions("", "<s>")


def test_skip_invalid_keeps_the_valid_records_and_lists_the_others(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes(
        b'{"id": "a", "question": "ok"}\n'
        b"not json\n"
        b'{"id": "a", "question": "again"}\n'
        b'{"question": "caf\xe9"}\n'
        b'{"id": "b", "question": "fine", "answer_format": "essay"}\n'
        b'{"id": "c", "question": "also fine"}\n'
    )
    qs, skipped, warnings = read_questions_skipping(p)
    assert [q.id for q in qs] == ["a", "c"]
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{p}:{n}" for n in (2, 3, 4, 5)]
    assert "not UTF-8" in skipped[2] and "unknown answer_format" in skipped[3]
    assert warnings == []
    with pytest.raises(InputError):  # the default refuses the file, naming every bad line
        read_questions(p)
    nothing = tmp_path / "none.jsonl"
    nothing.write_text('{"id": 1}\n')
    with pytest.raises(InputError, match="no valid questions"):
        read_questions_skipping(nothing)


# ---- hostile input: every case an InputError naming the line, never a traceback ----


def _problems(p, read=read_questions):
    with pytest.raises(InputError) as err:
        read(p)
    return err.value.problems


@pytest.mark.parametrize(
    "name, content, line",
    [
        ("deep.jsonl", '{"question": "ok"}\n' + "[" * 100_000 + "\n", 2),
        ("meta.jsonl", '{"question": "ok"}\n{"question": "x", "m": ' + "[" * 100_000 + "]" * 100_000 + "}\n", 2),
        ("deep.json", '[\n {"question": "ok"},\n ' + "[" * 100_000 + "]" * 100_000 + "\n]\n", 3),
    ],
)
def test_json_nested_too_deeply_is_refused_on_its_line(tmp_path, name, content, line):
    p = tmp_path / name
    p.write_text(content)
    assert _problems(p) == [(line, "JSON nested too deeply")]


def test_lone_surrogates_are_refused_naming_the_field(tmp_path):
    p = tmp_path / "s.jsonl"
    p.write_text(
        '{"question": "ok", "id": "a"}\n'
        '{"question": "x\\ud800"}\n'
        '{"question": "x", "id": "\\udfff"}\n'
        '{"question": "x", "source": {"k": ["\\uDC00"]}}\n'
        '{"question": "x", "\\ud800": 1}\n'
        # an escaped backslash before "ud800", and a valid pair (an emoji), are fine
        '{"question": "\\\\ud800 \\ud83d\\ude00", "id": "b"}\n'
    )
    lone = "holds a lone surrogate {}, which is not valid Unicode"
    assert _problems(p) == [
        (2, "'question' " + lone.format("\\ud800")),
        (3, "'id' " + lone.format("\\udfff")),
        (4, "'source' " + lone.format("\\udc00")),
        (5, "a field name " + lone.format("\\ud800")),
    ]
    assert [q.question for q in read_questions_skipping(p).questions] == ["ok", "\\ud800 \U0001f600"]
    array = tmp_path / "s.json"
    array.write_text('[\n {"question": "ok"},\n {"question": "y",\n  "category": "\\ud800"}\n]\n')
    assert _problems(array) == [(3, "'category' " + lone.format("\\ud800"))]


def test_api_refuses_lone_surrogates_in_strings_dicts_and_questions():
    from symoe_agents.records import Question

    for item in ["a\ud800", {"question": "b", "m": ["\udc00"]}, Question(id="1", question="q", category="\ud800")]:
        with pytest.raises(InputError, match=r"holds a lone surrogate \\ud[8c]00"):
            as_questions([item])


def test_huge_numbers_and_ids_are_refused_on_their_line(tmp_path):
    p = tmp_path / "big.jsonl"
    p.write_text(
        f'{{"question": "ok", "id": "{"a" * 1000}"}}\n'
        f'{{"question": "x", "id": {"9" * 5000}}}\n'
        f'{{"question": "x", "id": "{"b" * 1001}"}}\n'
        f'{{"question": "x", "id": {"9" * 1001}}}\n'
    )
    assert _problems(p) == [
        (2, "a number with more than 4300 digits, which Python will not read; write it as a string"),
        (3, "'id' is 1001 characters long; ids are at most 1000 characters"),
        (4, "'id' has more than 1000 digits; ids are at most 1000 characters"),
    ]
    array = tmp_path / "big.json"
    array.write_text(f'[\n {{"question": "ok"}},\n {{"question": "x", "gold_answer": {"1" * 5000}}}\n]\n')
    assert _problems(array) == [(3, "a number with more than 4300 digits, which Python will not read; write it as a string")]
    with pytest.raises(InputError, match="'id' has more than 1000 digits"):  # str() of it would raise
        as_questions([{"question": "x", "id": 10**5000}])


def test_jsonl_lines_end_at_newline_only(tmp_path):
    # U+2028, U+2029 and U+0085 may stand raw in a JSON string; str.splitlines splits at them
    p = tmp_path / "sep.jsonl"
    p.write_text('{"question": "a\u2028b\u2029c\u0085d"}\r\n{"question": "e"}\r\n{"id": 1}\n', newline="")
    assert _problems(p) == [(3, "missing required field 'question'")]
    assert [q.question for q in read_questions_skipping(p).questions] == ["a\u2028b\u2029c\u0085d", "e"]
    # \x0b, \x0c, \x1c-\x1e are control characters: refused, and on their own line
    ctrl = tmp_path / "ctrl.jsonl"
    ctrl.write_text('{"question": "a\x0cb"}\n{"id": 1}\n')
    assert _problems(ctrl) == [(1, "invalid JSON: Invalid control character at (column 16)"), (2, "missing required field 'question'")]


def test_json_array_items_are_reported_on_their_own_line(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n  {"question": "a"},\n  3,\n  [\n    {"question": "b"}\n  ],\n  {"question":\n   "c"}, "s"\n]\n')
    assert _problems(p) == [(3, "expected a JSON object, got int"), (4, "expected a JSON object, got list"), (8, "expected a JSON object, got str")]
    assert [q.question for q in read_questions_skipping(p).questions] == ["a", "c"]


@pytest.mark.parametrize(
    "content, line, problem",
    [
        ('[\n {"question": "a"}\n {"question": "b"}\n]\n', 3, "invalid JSON: expected ',' or ']' after an array item"),
        ('[\n {"question": "a"},\n {"question": "b"},\n]\n', 4, "invalid JSON: Expecting value"),
        ('[\n {"question": "a"},\n {"question": \n  nope}\n]\n', 4, "invalid JSON: Expecting value"),
        ('[\n {"question": "a"}\n]\n[]\n', 4, "invalid JSON: more text after the array's closing ']'"),
        ('\x0c[\n {"question": "a"}\n]\n', 1, "invalid JSON: Expecting value"),  # \x0c is not JSON whitespace
    ],
)
def test_json_array_syntax_errors_name_their_line(tmp_path, content, line, problem):
    p = tmp_path / "bad.json"
    p.write_text(content)
    assert _problems(p, read_questions_skipping) == [(line, problem)]  # the whole file's problem


def test_gold_answer_outside_the_options_is_a_warning(tmp_path):
    p = tmp_path / "g.jsonl"
    p.write_text(
        '{"question": "Pick. The options are: (A) 1 (B) 2 (C) 3", "gold_answer": "E"}\n'
        '{"question": "Pick (A) 1 (B) 2", "gold_answer": "(b)"}\n'
        '{"question": "Pick (A) 1 (B) 2", "gold_answer": "42", "answer_format": "multiple_choice"}\n'
        '{"question": "Pick (A) 1 (B) 2", "gold_answer": "42"}\n'
    )
    got = read_questions_skipping(p, skip_invalid=False)
    assert len(got.questions) == 4 and got.skipped == []
    assert got.warnings == [
        f"{p}:1: gold answer 'E' is not one of the question's options (A, B, C); it can never be scored correct",
        f"{p}:3: gold answer '42' is not one of the question's options (A, B); it can never be scored correct",
    ]
    assert len(read_questions(p)) == 4


def test_input_that_is_not_a_regular_file(tmp_path, monkeypatch):
    import io
    import os
    import socket

    assert _problems(tmp_path) == [(None, "is a directory; give a questions file (JSONL, or a JSON array)")]
    assert _problems(tmp_path / "none.jsonl") == [(None, "file not found")]
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(tmp_path / "s"))
        assert _problems(tmp_path / "s") == [(None, "is a socket; give a questions file (JSONL, or a JSON array)")]
    finally:
        sock.close()
    # bash's <(...) hands over /dev/fd/N, a pipe: read once, as a stream
    r, w = os.pipe()
    os.write(w, b'{"question": "piped"}\n')
    os.close(w)
    try:
        assert [q.question for q in read_questions(f"/dev/fd/{r}")] == ["piped"]
    finally:
        os.close(r)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"question": "typed"}\nnope\n')))
    with pytest.raises(InputError, match="<stdin>:2: invalid JSON: Expecting value"):
        read_questions("-")
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b'{"question": "typed"}\n')))
    assert [q.question for q in read_questions("-")] == ["typed"]


def _solve(args: list[str], stdin: str = ""):
    from typer.testing import CliRunner

    from symoe_agents.cli import app

    return CliRunner().invoke(app, ["solve", *args], input=stdin)


def test_cli_reads_standard_input_and_asks_for_o(tmp_path):
    no_o = _solve(["-"], '{"question": "x"}\n')
    assert no_o.exit_code == 2 and "error: give -o: - is read as a stream" in no_o.stderr
    read = _solve(["-", "-o", str(tmp_path / "out.jsonl")], '{"question": "x"}\nnope\n')
    assert read.exit_code == 2 and "<stdin>:2: invalid JSON" in read.stderr


def test_cli_refuses_a_directory_and_prints_warnings(tmp_path):
    d = _solve([str(tmp_path)])
    assert d.exit_code == 2 and f"{tmp_path}: is a directory; give a questions file" in d.stderr
    p = tmp_path / "g.jsonl"
    p.write_text('{"question": "Pick (A) 1 (B) 2", "gold_answer": "C"}\n')
    # the output named as the input stops the run (exit 2) after the warnings, before any server
    w = _solve([str(p), "-o", str(p)])
    assert w.exit_code == 2 and f"[symoe] warning: {p}:1: gold answer 'C' is not one of" in w.stderr
