"""Durability without servers: the answers file's resume rules and the answer cache."""

import json
import sqlite3

import pytest

from symoe_agents.answer_file import AnswerFile, read_state
from symoe_agents.cache import AnswerCache, CallIdentity
from symoe_agents.errors import CacheError, OutputError
from symoe_agents.records import Completion, Question, QuestionResult

QS = [Question(id=f"q{i}", question=f"What is {i} + {i}?") for i in range(4)]


def record(q: Question, errors=()) -> dict:
    return QuestionResult(
        id=q.id, question=q.question, answer_format="free", skills=[], routing="fixed", experts=["m"],
        expert_answers=[], aggregator=None, final_answer="2", errors=list(errors),
    ).model_dump(mode="json")  # fmt: skip


def lines(*recs) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in recs)


# -- the answers file ---------------------------------------------------------------------


def test_finished_questions_are_not_pending_and_a_cut_last_line_is_dropped(tmp_path):
    path = tmp_path / "a.jsonl"
    good = lines(record(QS[0]), record(QS[1]))
    path.write_bytes(good + json.dumps(record(QS[2])).encode()[:40])  # a crash mid-write
    f = AnswerFile.open(path, QS)
    assert f.state.dropped_partial_line and set(f.state.done) == {"q0", "q1"}
    assert [q.id for q in f.pending(QS)] == ["q2", "q3"]
    assert path.read_bytes() == good  # cut back to the last complete line
    f.append(QuestionResult.model_validate(record(QS[2])))
    f.close()
    reread = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["id"] for r in reread] == ["q0", "q1", "q2"]  # each once, appended after the good lines


@pytest.mark.parametrize(
    "content, fragment",
    [
        (lines(record(QS[0])) + b"garbage\n" + lines(record(QS[1])), "a.jsonl:2: not a symoe answer record"),
        (lines(record(QS[0]), record(QS[0])), "a.jsonl:2: id 'q0' again (first on line 1)"),
        (lines({**record(QS[1]), "question": "something else"}), "a.jsonl:1: id 'q1' holds a different question"),
        (b'{"no_id": 1}\n', "a.jsonl:1: not a symoe answer record"),
    ],
)
def test_a_file_that_cannot_be_resumed_names_the_line_and_the_way_out(tmp_path, content, fragment):
    path = tmp_path / "a.jsonl"
    path.write_bytes(content)
    with pytest.raises(OutputError) as err:
        AnswerFile.open(path, QS)
    assert fragment in str(err.value) and "--fresh" in str(err.value)
    assert path.read_bytes() == content  # untouched


def test_fresh_starts_over_and_retry_failed_rewrites_without_failed_records(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(lines(record(QS[0]), record(QS[1], errors=["expert m: HTTP 500"]), record(QS[2])))
    f = AnswerFile.open(path, QS, retry_failed=True)
    f.close()
    assert f.state.retried == ["q1"]
    assert [json.loads(x)["id"] for x in path.read_text().splitlines()] == ["q0", "q2"]
    assert [q.id for q in f.pending(QS)] == ["q1", "q3"]
    f = AnswerFile.open(path, QS, fresh=True)
    f.close()
    assert path.read_text() == "" and len(f.pending(QS)) == 4


def test_records_of_other_questions_are_kept_and_reported():
    st = read_state(lines(record(Question(id="old", question="gone?")), record(QS[0])), "a", QS)
    assert st.foreign == ["old"] and set(st.done) == {"old", "q0"}


# -- the answer cache ---------------------------------------------------------------------


def ident(**change) -> CallIdentity:
    base = dict(model_identity="llamacpp:m#abc", prompt_sha256="p" * 64, sampling=(("temperature", 0.7),), seed=7, sample=0)
    return CallIdentity(**{**base, **change})


def test_the_key_changes_with_everything_that_determines_an_answer():
    keys = {
        ident().key,
        ident(model_identity="llamacpp:other#abc").key,
        ident(prompt_sha256="q" * 64).key,
        ident(sampling=(("temperature", 0.3),)).key,
        ident(seed=8).key,
        ident(sample=1).key,
    }
    assert len(keys) == 6 and ident().key == ident().key


def test_answers_survive_a_reopen_failures_are_not_kept_and_fresh_does_not_read(tmp_path):
    path = tmp_path / "c.sqlite"
    ok = Completion(model="m", text="The answer is (B)", prompt_tokens=10, completion_tokens=5, latency_s=1.5, prompt_sha256="p")
    with AnswerCache(path) as cache:
        cache.note_attempt("k1")
        cache.put("k1", ok, "expert", "q0", 0)
        cache.note_attempt("k2")
        cache.note_attempt("k2")
        cache.put("k2", Completion(model="m", error="HTTP 500"), "expert", "q1", 0)
    with AnswerCache(path) as cache:
        hit = cache.get("k1")
        assert hit is not None and hit.cached and hit.text == ok.text and hit.latency_s == 1.5
        assert cache.get("k2") is None and cache.hits == 1
        assert cache.attempt_counts() == {"k1": 1, "k2": 2}
    with AnswerCache(path, read=False) as cache:
        assert cache.get("k1") is None  # --fresh: asked again, and the new answer replaces it
        cache.put("k1", ok.model_copy(update={"text": "new"}), "expert", "q0", 0)
    with AnswerCache(path) as cache:
        assert cache.get("k1").text == "new"


def test_a_file_that_is_not_a_cache_is_refused_with_what_to_do(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CacheError, match="--no-cache"):
        AnswerCache(junk)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE t (x)")
    db.close()
    with pytest.raises(CacheError, match="not a symoe answer cache"):
        AnswerCache(other)
