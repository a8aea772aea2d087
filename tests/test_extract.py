import pytest

from symoe_agents.eval import extract_boxed, extract_choice, extract_free, extract_math, is_correct
from symoe_agents.formats import AnswerFormat, detect_format, option_letters

ABCD = list("ABCD")
A_TO_J = list("ABCDEFGHIJ")


@pytest.mark.parametrize(
    "text, letters, expected",
    [
        ("Step 1... The answer is (B)", ABCD, "B"),
        ("The answer is B.", ABCD, "B"),
        ("Answer: (C)", ABCD, "C"),
        ("**Final answer: D**", ABCD, "D"),
        # the reference fallback (last bare capital) gives "I" here; the strict rule keeps B
        ("The answer is B. I think that is right.", A_TO_J, "B"),
        # the last stated answer wins over an earlier one
        ("First I thought the answer is (A). On reflection the answer is (C).", ABCD, "C"),
        # a letter outside the question's options is not an answer
        ("The answer is (E)", ABCD, None),
        # echoed instructions: "(X)" is not an option letter
        ('Then write "The answer is (X)", where X is a letter.', ABCD, None),
        # "answer is I think..." must not read a bare pronoun as option I
        ("I'd say the answer is I think unclear", A_TO_J, None),
        # an option list repeated in the reasoning is no statement
        ("Options: (A) 1 (B) 2 (C) 3 (D) 4. Hmm, hard to say.", ABCD, None),
        # a lone marker on the last line is
        ("Working...\n(D)", ABCD, "D"),
        ("\\boxed{B}", ABCD, "B"),
        ("<think>the answer is (A)</think>The answer is (D)", ABCD, "D"),
        ("", ABCD, None),
        ("The answer is (J)", A_TO_J, "J"),
    ],
)
def test_extract_choice(text, letters, expected):
    assert extract_choice(text, letters) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{33}", "33"),
        ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),  # last, braces matched
        ("\\boxed{x^{2}+1}", "x^{2}+1"),
        ("\\boxed{12", None),  # cut off
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The answer is \\boxed{033}", "033"),
        ("The answer is 49.", "49"),
        ("so the answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
        ('write "The answer is" at the end:\n3^4 = 81', None),  # echoed instruction, no value
        ("the answer is indeed: 9", None),
        ("<think>\\boxed{1}</think> The answer is \\boxed{2}", "2"),
    ],
)
def test_extract_math(text, expected):
    assert extract_math(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Reasoning.\nThe answer is: Paris.", "Paris"),
        ("Paris is the capital.\nSo Paris", "So Paris"),
        ("", None),
    ],
)
def test_extract_free(text, expected):
    assert extract_free(text) == expected


@pytest.mark.parametrize(
    "pred, gold, fmt, ok",
    [
        ("B", "B", AnswerFormat.MULTIPLE_CHOICE, True),
        ("B", "(b)", AnswerFormat.MULTIPLE_CHOICE, True),
        ("A", "B", AnswerFormat.MULTIPLE_CHOICE, False),
        (None, "B", AnswerFormat.MULTIPLE_CHOICE, False),  # unparsable counts as wrong
        ("033", "33", AnswerFormat.MATH, True),
        ("\\frac{208}{2}", "104", AnswerFormat.MATH, True),
        ("0.5", "\\frac{1}{2}", AnswerFormat.MATH, True),
        ("1,000", "1000", AnswerFormat.MATH, True),
        ("34", "33", AnswerFormat.MATH, False),
        ("1+x^2", "x^2+1", AnswerFormat.MATH, True),  # symbolic: math-verify
        ("\\sqrt{4}", "2", AnswerFormat.MATH, True),
        ("\\frac{1}{3}", "0.33", AnswerFormat.MATH, False),
        ("The capital city of France is Paris.", "Paris", AnswerFormat.FREE, True),
        ("paris", "Paris", AnswerFormat.FREE, True),
        ("Lyon", "Paris", AnswerFormat.FREE, False),
        ("Not Paris but " + "word " * 20, "Paris", AnswerFormat.FREE, False),  # long text does not count
    ],
)
def test_is_correct(pred, gold, fmt, ok):
    assert is_correct(pred, gold, fmt) is ok


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Pick one. The options are: (A) x (B) y (C) z", list("ABC")),
        ("Stem mentions (C) first. The options are: (A) 1 (B) 2", list("AB")),
        ("Only (A) here", []),
        ("a) b) c) lower-case stem The options are: (A) abc (B) bcd (C) ac (D) bd", list("ABCD")),
    ],
)
def test_option_letters(question, expected):
    assert option_letters(question) == expected


@pytest.mark.parametrize(
    "question, gold, fmt",
    [
        ("Which? The options are: (A) x (B) y", "A", AnswerFormat.MULTIPLE_CHOICE),
        ("Compute $2^{10}$.", None, AnswerFormat.MATH),
        ("How many integers below 100 are prime?", "25", AnswerFormat.MATH),
        ("Who wrote Hamlet?", "Shakespeare", AnswerFormat.FREE),
        ("Who wrote Hamlet?", None, AnswerFormat.FREE),
    ],
)
def test_detect_format(question, gold, fmt):
    assert detect_format(question, gold)[0] is fmt


def test_detect_format_on_the_upstream_sets():
    import json

    from conftest import UPSTREAM

    if not UPSTREAM.is_dir():
        pytest.skip("../shared/upstream-data not present")
    for name, fmt in [("GPQA_train.json", "multiple_choice"), ("MMLU_Pro_train.json", "multiple_choice"),
                      ("MedMCQA_train.json", "multiple_choice"), ("AIME24_train.json", "math")]:  # fmt: skip
        records = json.loads((UPSTREAM / name).read_text())
        detected = [detect_format(r["question"], r["gold_answer"]) for r in records]
        share = sum(1 for f, _ in detected if f.value == fmt) / len(records)
        assert share > 0.97, (name, share)
        if fmt == "multiple_choice":  # the gold letter is always among the detected options
            hits = sum(1 for r, (_, letters) in zip(records, detected) if r["gold_answer"] in letters)
            assert hits / len(records) > 0.97, name


def test_math_scoring_off_the_main_thread_falls_back_to_the_normaliser():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # math-verify's signal timeouts need the main thread
        assert pool.submit(is_correct, "033", "33", AnswerFormat.MATH).result() is True
        assert pool.submit(is_correct, "1+x^2", "x^2+1", AnswerFormat.MATH).result() is False
