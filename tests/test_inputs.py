import json

import pytest

from symoe_agents.errors import InputError
from symoe_agents.inputs import as_questions, parse_questions, read_questions


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
    from symoe_agents.inputs import read_questions_skipping

    p = tmp_path / "mixed.jsonl"
    p.write_bytes(
        b'{"id": "a", "question": "ok"}\n'
        b"not json\n"
        b'{"id": "a", "question": "again"}\n'
        b'{"question": "caf\xe9"}\n'
        b'{"id": "b", "question": "fine", "answer_format": "essay"}\n'
        b'{"id": "c", "question": "also fine"}\n'
    )
    qs, skipped = read_questions_skipping(p)
    assert [q.id for q in qs] == ["a", "c"]
    assert [s.split(": ", 1)[0] for s in skipped] == [f"{p}:{n}" for n in (2, 3, 4, 5)]
    assert "not UTF-8" in skipped[2] and "unknown answer_format" in skipped[3]
    with pytest.raises(InputError):  # the default refuses the file, naming every bad line
        read_questions(p)
    nothing = tmp_path / "none.jsonl"
    nothing.write_text('{"id": 1}\n')
    with pytest.raises(InputError, match="no valid questions"):
        read_questions_skipping(nothing)
