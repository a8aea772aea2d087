"""symoe serve's wire format: how a request becomes a question, and a record a response."""

import pytest

from symoe_agents.records import AggregatorAnswer, ExpertAnswer, QuestionResult, StageUsage, Usage
from symoe_agents.serve_openai import BadRequest, Chunks, answer_text, chat_completion, read_chat, read_completion, symoe_object


def test_the_last_user_message_is_the_question_and_earlier_turns_its_context():
    asked = read_chat({"model": "symoe", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "I have 3 apples."},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": [{"type": "text", "text": "How many"}, {"type": "text", "text": "do I have?"}]},
    ]})  # fmt: skip
    assert asked.question == "How many\ndo I have?"
    assert asked.context == (
        "Conversation so far:\nInstructions: Be brief.\n\nUser: I have 3 apples.\n\nAssistant: Noted.\n\nThe question to answer now:"
    )
    assert not asked.stream and read_chat({"model": "m", "messages": [{"role": "user", "content": "q"}]}).context == ""


@pytest.mark.parametrize(
    "body, says",
    [
        ([], "JSON object"),
        ({"messages": [{"role": "user", "content": "q"}]}, "'model' is required"),
        ({"model": "symoe", "messages": []}, "non-empty list"),
        ({"model": "symoe", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "must be the user's"),
        ({"model": "symoe", "messages": [{"role": "robot", "content": "q"}]}, "needs a 'role'"),
        ({"model": "symoe", "messages": [{"role": "user", "content": "  "}]}, "is empty"),
        ({"model": "symoe", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "'image_url' part"),
        ({"model": "symoe", "messages": [{"role": "user", "content": 5}]}, "string or a list"),
        ({"model": "symoe", "n": 3, "messages": [{"role": "user", "content": "q"}]}, "'n' must be 1"),
        ({"model": "symoe", "stream": "yes", "messages": [{"role": "user", "content": "q"}]}, "'stream' must be"),
        ({"model": "symoe", "messages": [{"role": "user", "content": "half \ud800 pair"}]}, "lone surrogate"),
    ],
)
def test_bad_chat_requests_say_what_to_fix(body, says):
    with pytest.raises(BadRequest, match=says):
        read_chat(body)


def test_completion_prompt_is_one_string():
    assert read_completion({"model": "symoe", "prompt": ["What is 2+2?"]}).question == "What is 2+2?"
    with pytest.raises(BadRequest, match="one non-empty string"):
        read_completion({"model": "symoe", "prompt": ["a", "b"]})


def record(**kw) -> QuestionResult:
    base = dict(id="q", question="What is 2+2?", answer_format="math", skills=["arithmetic"], routing="skills",
                experts=["a", "b"], expert_answers=[], aggregator=None)  # fmt: skip
    base.update(kw)
    return QuestionResult(**base)


def test_without_an_aggregator_the_answer_is_the_winning_expert_response():
    r = record(
        expert_answers=[ExpertAnswer(model="a", slot=0, text="It is 5", extracted="5"), ExpertAnswer(model="b", slot=1, text="So: 4", extracted="4")],
        final_answer="4", final_source="vote",
    )  # fmt: skip
    assert answer_text(r) == "So: 4"
    assert answer_text(record(final_answer=None)) == ""


def test_usage_is_the_sum_of_the_stages_and_the_symoe_object_tells_who_answered():
    usage = Usage(
        skills=StageUsage(calls=2, prompt_tokens=10, completion_tokens=7, device_s=1.5, cost_usd=0.25),
        experts=StageUsage(calls=2, cached=1, prompt_tokens=20, completion_tokens=30, cost_usd=0.5),
        aggregator=StageUsage(calls=1, prompt_tokens=40, completion_tokens=5, device_s=0.5),
    )  # fmt: skip
    r = record(
        expert_answers=[ExpertAnswer(model="a", slot=0, text="4", extracted="4", cached=True), ExpertAnswer(model="b", slot=1, text="4", extracted="4")],
        aggregator="a", aggregator_response="The answer is 4.", aggregator_answer=AggregatorAnswer(model="a", text="The answer is 4.", extracted="4", finish_reason="length"),
        aggregator_status="answered", final_answer="4", final_source="aggregator", usage=usage,
    )  # fmt: skip
    symoe = symoe_object(r, "symoe", 0.5, 2.0)
    body = chat_completion("id1", "symoe", 0, r, symoe)
    assert body["usage"] == {"prompt_tokens": 70, "completion_tokens": 42, "total_tokens": 112}
    assert body["choices"][0]["message"]["content"] == "The answer is 4." and body["choices"][0]["finish_reason"] == "length"
    assert symoe["cost"] == {"calls": 5, "cached_calls": 1, "prompt_tokens": 70, "completion_tokens": 42, "usd": 0.75, "device_s": 2.0,
                              "queue_s": 0.5, "window_s": 2.0}
    assert [(e["model"], e["extracted"], e["cached"]) for e in symoe["experts"]] == [("a", "4", True), ("b", "4", False)]
    assert symoe["final_source"] == "aggregator" and symoe["skills"] == ["arithmetic"]
    assert "routing_explanation" not in symoe  # explain is off
    from symoe_agents.explain import Draw, RoutingExplanation

    why = RoutingExplanation(method="fixed", draws=[Draw(slot=0, uniform=None, drawn="a"), Draw(slot=1, uniform=None, drawn="b")])
    explained = symoe_object(r.model_copy(update={"routing_explanation": why}), "symoe", 0.5, 2.0)
    assert explained["routing_explanation"] == why.model_dump()


def test_chunks_are_chat_or_text_shaped():
    chat, text = Chunks("c1", "symoe", 0, chat=True), Chunks("t1", "symoe", 0, chat=False)
    assert chat.opening(2)["choices"][0]["delta"] == {"role": "assistant", "content": ""} and chat.opening(2)["symoe"] == {"stage": "queued", "ahead": 2}
    assert chat.text("hi")["choices"][0]["delta"] == {"content": "hi"} and chat.text("hi")["object"] == "chat.completion.chunk"
    assert text.text("hi")["choices"][0]["text"] == "hi" and text.text("hi")["object"] == "text_completion"
    r = record(final_answer="4", usage=Usage(skills=StageUsage(prompt_tokens=1, completion_tokens=2)))
    assert chat.usage(r) == {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "symoe", "choices": [],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}  # fmt: skip
