"""The aggregator's answer is the method's answer: how its prompt is built, what the record
says when it fails or does not parse, the opt-in fallback, the consensus option, calls cut
off at max_tokens, and draws that depend on the question's content.

Every role runs on a STAND-IN hosted API (tests/standins/openai_standin.py) whose replies
are scripted per model and question, because only scripted answers make these outcomes
exact; the real-server paths are covered by test_e2e.py.
"""

from __future__ import annotations

import pytest

from standins.openai_standin import ScriptedAPI
from symoe_agents import SymbolicMoE
from symoe_agents.config import parse_config
from symoe_agents.final_answer import consensus, decide, majority
from symoe_agents.methods import Method

QUESTION = "What is 15 + 27? The options are: (A) 32 (B) 42 (C) 52"
TOP3 = Method("top-k", "fixed", 3, fixed=("e1", "e2", "e3"))


def config(api: ScriptedAPI, **top):
    model = lambda name: {"backend": "openai", "base_url": api.base_url, "model": name}  # noqa: E731
    return parse_config(
        {
            "k": 3,
            "models": {m: model(m) for m in ("sk", "e1", "e2", "e3", "agg")},
            "roles": {"skill_inferencer": "sk", "experts": ["e1", "e2", "e3"], "aggregator": "agg"},
            "sampling": {"skill_inferencer": {"samples": 2}},
            "concurrency": {"retries": 0},
            **top,
        },
        "test",
    )


def pool(experts: dict[str, str | int | tuple[str, str]], aggregator: str | int = "The answer is (B)"):
    """A scripted pool: each expert's reply (text, an HTTP status, or (text, finish_reason))."""

    def reply(req: dict):
        model, prompt = req["model"], req["messages"][0]["content"]
        if model == "sk":
            return "<think>Keywords: poetry, opera</think>Keywords: arithmetic, addition"
        if model == "agg":
            return aggregator
        return experts[model] if QUESTION in prompt else "Thinking. The answer is (A)"

    return reply


def agg_prompts(api: ScriptedAPI) -> list[str]:
    return [r["messages"][0]["content"] for r in api.requests if r["model"] == "agg"]


async def test_the_aggregator_sees_the_answered_responses_in_slot_order_without_reasoning():
    experts = {
        "e1": "<think>secret scratch work, (C)?</think>Reasoning one: 15 + 27 = 42. The answer is (B)",
        "e2": 400,  # this expert's call fails: it is left out, not shown as empty
        "e3": "Reasoning three. The answer is (A)",
    }
    async with ScriptedAPI([], pool(experts)) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION, "gold_answer": "B"}], method=TOP3)
    (prompt,) = agg_prompts(api)
    one = prompt.index("Response 1:\nReasoning one: 15 + 27 = 42. The answer is (B)")
    two = prompt.index("Response 2:\nReasoning three. The answer is (A)")
    asked = prompt.index(f"Question: {QUESTION}")
    assert one < two < asked
    assert "Response 3" not in prompt and "secret scratch work" not in prompt and "<think>" not in prompt
    assert prompt.rstrip().endswith('write "The answer is (X)", where X is the single capital letter of the option you choose (A, B, C).')
    assert [a.model for a in r.expert_answers] == ["e1", "e2", "e3"]
    assert r.expert_answers[1].text is None and "HTTP 400" in r.expert_answers[1].error
    assert [a.extracted for a in r.expert_answers] == ["B", None, "A"]
    assert (r.aggregator_status, r.final_answer, r.final_source, r.correct) == ("answered", "B", "aggregator", True)


@pytest.mark.parametrize(
    "aggregator, status",
    [("I weighed them all and cannot decide between them.", "unparsable"), (400, "failed")],
)
async def test_an_aggregator_without_an_answer_leaves_the_question_unanswered(aggregator, status):
    experts = {"e1": "The answer is (B)", "e2": "The answer is (B)", "e3": "The answer is (A)"}
    async with ScriptedAPI([], pool(experts, aggregator)) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION, "gold_answer": "B"}], method=TOP3)
            summary = moe.summary
    # the experts' majority is B, the gold: a hidden fallback would score this correct
    assert (r.aggregator_status, r.final_answer, r.final_source, r.correct) == (status, None, None, False)
    assert summary.unanswered == 1 and summary.correct == 0 and summary.fallbacks_used == 0
    assert (summary.aggregator_unparsable, summary.aggregator_failed) == ((1, 0) if status == "unparsable" else (0, 1))
    assert (status == "failed") == any(e.startswith("aggregator agg: ") for e in r.errors)
    rendered = summary.render()
    assert f"aggregator: 0 answered, {summary.aggregator_unparsable} unparsable, {summary.aggregator_failed} failed" in rendered
    assert "no final answer: 1 questions (scored wrong)" in rendered


@pytest.mark.parametrize("aggregator", ["I cannot decide.", 400])
async def test_the_expert_majority_fallback_is_opt_in_and_said(aggregator):
    experts = {"e1": "The answer is (C)", "e2": "The answer is (B)", "e3": "The answer is (B)"}
    async with ScriptedAPI([], pool(experts, aggregator)) as api:
        async with SymbolicMoE(config(api, fallback="expert-majority")) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION, "gold_answer": "B"}], method=TOP3)
            summary = moe.summary
    assert (r.final_answer, r.final_source, r.correct) == ("B", "fallback-expert-majority", True)
    assert summary.fallbacks_used == 1 and "fallback to the experts' majority: 1 questions" in summary.render()


async def test_on_disagreement_skips_the_aggregator_only_when_all_k_agree():
    agree = "Which is even? The options are: (A) 3 (B) 4 (C) 5"

    def reply(req):
        model, prompt = req["model"], req["messages"][0]["content"]
        if model == "agg":
            return "The answer is (C)"
        if agree in prompt:
            return "The answer is (B)"
        return {"e1": "The answer is (A)", "e2": "The answer is (B)", "e3": "The answer is (A)"}[model]

    questions = [{"id": "same", "question": agree, "gold_answer": "B"}, {"id": "split", "question": QUESTION, "gold_answer": "B"}]
    async with ScriptedAPI([], reply) as api:
        async with SymbolicMoE(config(api, aggregate="on-disagreement")) as moe:
            same, split = await moe.solve_batch(questions, method=TOP3)
            summary = moe.summary
    assert (same.aggregator_status, same.final_answer, same.final_source, same.aggregator_answer) == ("skipped-consensus", "B", "consensus", None)
    assert (split.aggregator_status, split.final_answer, split.final_source) == ("answered", "C", "aggregator")
    assert len(agg_prompts(api)) == 1 and QUESTION in agg_prompts(api)[0]  # the agreed question was never sent
    assert summary.aggregations_skipped == summary.calls_saved == 1
    assert "1 skipped (experts agreed; 1 calls saved)" in summary.render()
    assert same.errors == [] and not any(g.failed for g in summary.groups)


async def test_always_aggregates_even_when_the_experts_agree():
    experts = {"e1": "The answer is (B)", "e2": "The answer is (B)", "e3": "The answer is (B)"}
    async with ScriptedAPI([], pool(experts, "The answer is (A)")) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION}], method=TOP3)
    assert (r.final_answer, r.final_source) == ("A", "aggregator") and len(agg_prompts(api)) == 1


async def test_calls_cut_off_at_max_tokens_are_marked_and_counted():
    experts = {"e1": "The answer is (B)", "e2": ("Let me compute 15 + 27 step by", "length"), "e3": "The answer is (B)"}
    async with ScriptedAPI([], pool(experts)) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION}], method=TOP3)
            summary = moe.summary
    assert [a.finish_reason for a in r.expert_answers] == ["stop", "length", "stop"]
    assert [a.truncated for a in r.expert_answers] == [False, True, False]
    assert r.truncated == ["expert e2 (slot 1)"]
    assert summary.truncated == {"expert": 1} and "cut off at max_tokens: expert 1 calls" in summary.render()


async def test_skills_are_parsed_after_the_reasoning_and_draws_follow_the_content():
    """Each ``moe.solve(text)`` is a batch whose one question has id "1": the experts and
    the sampling seeds must still differ between questions, and repeat for the same one."""
    questions = [f"What is {i} * 7? The options are: (A) {7 * i} (B) {7 * i + 1}" for i in range(12)]
    async with ScriptedAPI([], pool({}, "The answer is (A)")) as api:
        async with SymbolicMoE(config(api)) as moe:
            results = [await moe.solve(q) for q in questions]
            again = await moe.solve(questions[0])
    assert all(r.id == "1" for r in results)
    assert all(r.skills == ["arithmetic", "addition"] for r in results)  # not the drafts inside <think>
    assert len({tuple(r.experts) for r in results}) > 1
    assert again.experts == results[0].experts
    seeds = {}
    for req in api.requests:
        if req["model"] == "sk":
            seeds.setdefault(req["messages"][0]["content"], set()).add(req["seed"])
    first = [s for prompt, s in seeds.items() if questions[0] in prompt]
    assert len(first) == 1 and len(first[0]) == 2  # two samples; the same two seeds when asked again
    others = [s for prompt, s in seeds.items() if questions[0] not in prompt]
    assert all(s.isdisjoint(first[0]) for s in others)


def test_decide_table():
    assert decide("answered", "C", ["B", "B"]) == ("C", "aggregator")
    assert decide("unparsable", None, ["B", "B"]) == (None, None)
    assert decide("failed", None, ["B", "A", "B"], "expert-majority") == ("B", "fallback-expert-majority")
    assert decide("failed", None, [None, None], "expert-majority") == (None, None)
    assert decide("skipped-consensus", None, ["D", "D"], agreed="D") == ("D", "consensus")
    assert decide("no-expert-answers", None, []) == (None, None)
    assert decide(None, None, ["A", "B", "B"]) == ("B", "vote")
    assert decide(None, None, [None]) == (None, None)
    assert majority(["A", "B"]) == "A" and majority([None, "C", "C", "A"]) == "C"
    assert consensus(["B", "B", "B"], 3) == "B"
    assert consensus(["B", "B", None], 3) is None and consensus(["B", "B"], 3) is None and consensus(["B", "A", "B"], 3) is None


async def test_every_answered_slot_is_shown_once_including_a_model_drawn_twice():
    def reply(req):
        model = req["model"]
        if model == "agg":
            return "The answer is (B)"
        if model == "e1":
            return f"e1 seed {req['seed']}. The answer is (B)"  # a model drawn twice answers twice, independently
        return "<think>still thinking when the budget ran out" if model == "e2" else "e3 says. The answer is (C)"

    method = Method("top-k", "fixed", 4, fixed=("e1", "e2", "e1", "e3"))
    async with ScriptedAPI([], reply) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION}], method=method)
    (prompt,) = agg_prompts(api)
    body = prompt.split("Responses from the models:\n", 1)[1].split("\n\nQuestion: ", 1)[0]
    shown = body.split("\n\n")
    seeds = [a.text.split()[2].rstrip(".") for a in r.expert_answers if a.model == "e1"]
    assert len(set(seeds)) == 2  # two calls with two seeds
    # slot order; the response with nothing after its reasoning is left out and the numbers close up
    assert shown == [f"Response 1:\ne1 seed {seeds[0]}. The answer is (B)", f"Response 2:\ne1 seed {seeds[1]}. The answer is (B)",
                     "Response 3:\ne3 says. The answer is (C)"]  # fmt: skip
    assert [a.extracted for a in r.expert_answers] == ["B", None, "B", "C"]


async def test_no_expert_answer_means_no_aggregator_call():
    async with ScriptedAPI([], pool({"e1": 400, "e2": 400, "e3": 400})) as api:
        async with SymbolicMoE(config(api, fallback="expert-majority")) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION, "gold_answer": "B"}], method=TOP3)
            summary = moe.summary
    assert agg_prompts(api) == []
    assert (r.aggregator_status, r.aggregator_answer, r.final_answer, r.final_source, r.correct) == ("no-expert-answers", None, None, None, False)
    assert "aggregator skipped: no expert answered" in r.errors and summary.no_expert_answers == 1
    assert not any(g.failed for g in summary.groups if g.group.startswith("aggregate:"))  # not sent, so not failed


async def test_an_aggregator_cut_off_at_max_tokens_is_unparsable_and_truncated():
    experts = {"e1": "The answer is (B)", "e2": "The answer is (B)", "e3": "The answer is (A)"}
    async with ScriptedAPI([], pool(experts, ("Weighing the three responses, the first", "length"))) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION}], method=TOP3)
            summary = moe.summary
    assert (r.aggregator_status, r.final_answer, r.truncated) == ("unparsable", None, ["aggregator agg"])
    assert r.aggregator_answer.truncated and summary.truncated == {"aggregator": 1}


@pytest.mark.parametrize(
    "question, declared, instruction",
    [
        ("Compute $3^4 - 2^5$.", None, 'write "The answer is \\boxed{X}", where X is your final answer.'),
        ("What is the capital of France?", None, 'write "The answer is: X", where X is your final answer in a few words.'),
        # a declared format wins over detection: free text, though the question lists options
        ("Name it. The options are: (A) Paris (B) Lyon", "free", 'write "The answer is: X", where X is your final answer in a few words.'),
    ],
)
async def test_the_answer_instruction_follows_the_format(question, declared, instruction):
    async with ScriptedAPI([], pool({}, "The answer is: Paris")) as api:
        async with SymbolicMoE(config(api)) as moe:
            item = {"id": "q", "question": question, **({"answer_format": declared} if declared else {})}
            (r,) = await moe.solve_batch([item], method=TOP3)
    expert_prompts = [q["messages"][0]["content"] for q in api.requests if q["model"] in ("e1", "e2", "e3")]
    assert len(expert_prompts) == 3 and all(p.rstrip().endswith(instruction) for p in expert_prompts + agg_prompts(api))
    assert r.option_letters == []


async def test_a_question_declared_multiple_choice_without_options_is_refused_before_any_call():
    from symoe_agents import InputError

    async with ScriptedAPI([], pool({})) as api:
        async with SymbolicMoE(config(api)) as moe:
            with pytest.raises(InputError, match="answer_format is multiple_choice, but the question lists no options"):
                await moe.solve_batch([{"id": "q", "question": "Which is right?", "answer_format": "multiple_choice"}])
    assert api.requests == []


async def test_a_second_moa_layer_shows_each_proposer_the_first_layers_responses():
    def reply(req):
        prompt = req["messages"][0]["content"]
        layer = 2 if "Response 1:" in prompt else 1
        return "The answer is (B)" if req["model"] == "agg" else f"{req['model']} layer {layer}. The answer is (A)"

    method = Method("moa", "fixed", 2, fixed=("e1", "e2"), layers=2)
    async with ScriptedAPI([], reply) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION}], method=method)
    second = [q["messages"][0]["content"] for q in api.requests if q["model"] in ("e1", "e2") and "Response 1:" in q["messages"][0]["content"]]
    assert len(second) == 2
    for prompt in second:
        assert "Response 1:\ne1 layer 1. The answer is (A)\n\nResponse 2:\ne2 layer 1. The answer is (A)" in prompt
    assert [a.text for a in r.expert_answers] == ["e1 layer 2. The answer is (A)", "e2 layer 2. The answer is (A)"]
    (final_prompt,) = agg_prompts(api)
    assert "layer 2" in final_prompt and "layer 1" not in final_prompt


async def test_a_moa_slot_that_recovers_in_the_second_layer_keeps_no_first_layer_failure():
    def reply(req):
        prompt = req["messages"][0]["content"]
        if req["model"] == "agg":
            return "The answer is (B)"
        if "Response 1:" not in prompt:  # the first layer
            return 400 if req["model"] == "e1" else ("The answer is (B) because", "length")
        return "Second look. The answer is (B)"

    method = Method("moa", "fixed", 2, fixed=("e1", "e2"), layers=2)
    async with ScriptedAPI([], reply) as api:
        async with SymbolicMoE(config(api)) as moe:
            (r,) = await moe.solve_batch([{"id": "q", "question": QUESTION}], method=method)
            summary = moe.summary
    assert [a.text for a in r.expert_answers] == ["Second look. The answer is (B)"] * 2
    assert (r.errors, summary.failed_questions) == ([], 0)
    assert r.truncated == ["expert e2 (slot 1), an earlier layer"] and summary.truncated == {"expert": 1}


def test_equivalent_math_answers_vote_together():
    from symoe_agents.scoring import normalize_math

    assert majority(["34", "33", "033"]) == "34"  # as strings, three different votes
    assert majority(["34", "33", "033"], normalize_math) == "33"
    assert consensus(["33", "033", "\\frac{66}{2}"], 3, normalize_math) == "33"
    assert decide("failed", None, ["7", "034", "34"], "expert-majority", same=normalize_math) == ("034", "fallback-expert-majority")


async def test_a_closed_symbolicmoe_says_so_instead_of_solving():
    async with ScriptedAPI([], pool({"e1": "The answer is (B)", "e2": "The answer is (B)", "e3": "The answer is (A)"})) as api:
        moe = SymbolicMoE(config(api))
        with pytest.raises(RuntimeError, match="before solving"):
            await moe.solve_batch([{"id": "q", "question": QUESTION}], method=TOP3)
        async with moe:
            await moe.solve_batch([{"id": "q", "question": QUESTION}], method=TOP3)
        calls = api.calls
        with pytest.raises(RuntimeError, match="this SymbolicMoE is closed .* open a new one"):
            await moe.solve_batch([{"id": "q2", "question": QUESTION}], method=TOP3)
        assert api.calls == calls  # nothing was sent after the block
        async with moe:  # entered again: a fresh run
            (r,) = await moe.solve_batch([{"id": "q3", "question": QUESTION}], method=TOP3)
        assert r.expert_answers and r.expert_answers[0].error is None
