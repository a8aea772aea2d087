import pytest

from symoe_agents.errors import PromptError
from symoe_agents.prompting import TEMPLATE_NAMES, PromptTemplate, load_template


def test_every_builtin_template_loads_and_renders():
    variables = {
        "skills": {"question": "Q"},
        "expert": {"question": "Q", "answer_instruction": "I"},
        "aggregator": {"question": "Q", "responses": "R", "answer_instruction": "I"},
        "answer_multiple_choice": {"letters": "A, B"},
        "answer_math": {},
        "answer_free": {},
    }
    for name in TEMPLATE_NAMES:
        r = load_template(name).render(**variables[name])
        assert r.text and len(r.sha256) == 64 and r.template == name


def test_skills_prompt_follows_the_method():
    text = load_template("skills").render(question="What is 2+2?").text
    assert text.startswith("Question: What is 2+2?")
    assert "Keywords: <keyword1>, <keyword2>, ..." in text
    assert "2 to 5" in text


def test_math_instruction_keeps_literal_braces_and_question_braces_survive():
    assert "\\boxed{X}" in load_template("answer_math").render().text
    r = load_template("expert").render(question="Find $\\frac{a}{b}$ {x}", answer_instruction="I")
    assert "{x}" in r.text


def test_missing_or_unknown_variables_are_errors():
    with pytest.raises(PromptError, match="^template expert.md uses {answer_instruction}, which symoe does not provide; it provides: question$"):
        load_template("expert").render(question="Q")
    with pytest.raises(PromptError, match="^template skills.md lacks {extra}, which symoe provides and the prompt needs; add it$"):
        load_template("skills").render(question="Q", extra="x")
    with pytest.raises(PromptError, match="^template t.md is malformed \\(ValueError: Unknown format code 'd'"):
        PromptTemplate("t", "{n:d}").render(n="1")  # found when filled in, not when parsed


def test_prompts_dir_override(tmp_path):
    (tmp_path / "skills.md").write_text("Name skills for: {question}\n")
    assert load_template("skills", tmp_path).render(question="Q").text == "Name skills for: Q"
    with pytest.raises(PromptError, match="expert.md"):
        load_template("expert", tmp_path)


def test_the_aggregator_prompt_is_pinned():
    """The method's synthesis instruction (method.md section 5), then the responses, then the
    question and the answer instruction, written out here in full."""
    text = load_template("aggregator").render(question="Q?", responses="Response 1:\nR1\n\nResponse 2:\nR2", answer_instruction="I.").text
    assert text == (
        "Several models have answered the question below; their responses follow. Synthesise them into a single "
        "answer of high quality. Evaluate them critically, since some of them may be biased or wrong. Do not simply "
        "copy one response: write a refined, accurate and complete answer of your own.\n\n"
        "Responses from the models:\nResponse 1:\nR1\n\nResponse 2:\nR2\n\nQuestion: Q?\n\nI."
    )
