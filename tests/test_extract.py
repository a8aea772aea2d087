"""Answer formats, extraction and scoring (method.md sections 5-6), as tables of the
phrasings real models use, each with the answer a careful reader would take from it."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import UPSTREAM, listed_letters
from symoe_agents.extract import extract_answer, extract_boxed, extract_choice, extract_free, extract_math
from symoe_agents.scoring import is_correct
from symoe_agents.formats import AnswerFormat, detect_format, gold_alternatives, option_letters
from symoe_agents.reasoning import strip_reasoning

ABCD = list("ABCD")
A_TO_J = list("ABCDEFGHIJ")
MC, MATH, FREE = AnswerFormat.MULTIPLE_CHOICE, AnswerFormat.MATH, AnswerFormat.FREE

# (response, letters, expected extraction)
CHOICES = [
    ("Let's think step by step. 15 + 27 = 42, which is option B.\nThe answer is (B)", ABCD, "B"),
    # chatter after the answer does not change it
    ("The answer is (B).\n\nNote that (C) would be right had we subtracted; (D) is a common slip.", ABCD, "B"),
    ("The answer is (A). I hope this helps! Let me know if you want me to explain (C) too.", ABCD, "A"),
    # eliminations before the choice
    ("(A) is wrong since 32 is too small. (C) is wrong too. (D) cannot be. The answer is (B)", ABCD, "B"),
    ("We can rule out A and B. Between C and D, D fits.\nThe answer is D", ABCD, "D"),
    # markdown
    ("**Answer: (C)**", ABCD, "C"),
    ("The correct answer is **C**.", ABCD, "C"),
    ("### Final Answer\n\n**D**", ABCD, "D"),
    ("**Final answer:** D", ABCD, "D"),
    ("The answer is: __A__", ABCD, "A"),
    ("**The answer is (J)**", A_TO_J, "J"),
    # boxed letters
    ("The answer is $\\boxed{B}$", ABCD, "B"),
    ("Thus we get \\boxed{(C)}.", ABCD, "C"),
    ("\\boxed{\\text{A}}", ABCD, "A"),
    ("Option A looks tempting, but \\boxed{\\textbf{(D)}} is right.", ABCD, "D"),
    # reasoning blocks
    ("<think>the answer is (A)? no, wait</think>\nThe answer is (D)", ABCD, "D"),
    ("<think>Long reasoning that was cut off before it ended, leaning to (A)", ABCD, None),
    ("Okay, let me think. (A) no.</think>The answer is (C).", ABCD, "C"),
    # stated forms
    ("Answer: A", ABCD, "A"),
    ("The answer is B.", ABCD, "B"),
    ("The answer is option B because 15 + 27 is 42.", ABCD, "B"),
    ("The answer is B, since 42 > 40.", ABCD, "B"),
    ("The final answer is (C) because the others fail.", ABCD, "C"),
    ("So the answer is:\n\n(A) Infiltration anaesthesia", ABCD, "A"),
    ("Therefore the correct option is C) 42.", ABCD, "C"),
    ("The best answer is C.", ABCD, "C"),
    ("The answer is (B) 42", ABCD, "B"),
    ("I first said the answer is (B). Re-checking the sum: the answer is (C).", ABCD, "C"),
    # the reference fallback (last bare capital) gives "I" here; the stated answer is B
    ("The answer is B. I think that is right.", A_TO_J, "B"),
    # a bare pronoun or article after "answer is" is no letter
    ("I'd say the answer is I think unclear", A_TO_J, None),
    ("The answer is A bit more subtle than it looks; I lean to (C).", ABCD, "C"),
    # verdicts in parentheses count as statements; hypotheses do not
    ("Response 1 concludes the answer is (A), but it overlooks the boundary case. Therefore, **(B)** is correct.", ABCD, "B"),
    ("Some might think the answer is (A). However, on closer inspection, (D) is correct.", ABCD, "D"),
    ("If A is correct, the rate would double; it does not. Hence (C).", ABCD, "C"),
    ("If (A) is correct, the rate would double; it does not. The answer is (C).", ABCD, "C"),
    ("It is not true that (A) is correct. (C)", ABCD, "C"),
    ("Suppose B is correct. Then x = 3, a contradiction. So the choice is clear: (D)", ABCD, "D"),
    ("Statement I is correct and statement II is false, which matches (C).", A_TO_J, "C"),
    ("Vitamin C is the best-known antioxidant, but the question asks about (B).", ABCD, "B"),
    ("Hepatitis B is the correct diagnosis here, matching option (D).", ABCD, "D"),
    ("Many students think A is correct, but the right option is actually (C).", ABCD, "C"),
    ("At first I'd pick (A), but on reflection (C) is better.", ABCD, "C"),
    ("Group A is the right control; the correct choice here is (B)", ABCD, "B"),
    ("The answer is (C). Option A is correct only for acids.", ABCD, "C"),
    # a verdict after a statement overrules it only when it says so ("however", "therefore", ...)
    ("The answer is (B).\n\nNote: Response 2 claimed (C) is correct, but it ignored friction.", ABCD, "B"),
    ("The answer is (B). Students often believe (A) is correct, but it is a trap.", ABCD, "B"),
    ("We conclude that (B) is correct, since (A) and (C) fail.", ABCD, "B"),
    ("It is clear that (B) is correct; (D) is a distractor.", ABCD, "B"),
    ("I think (B) is correct, not (C).", ABCD, "B"),
    ("Let us test whether answer (A) is correct. It is not. (C) fits.", ABCD, "C"),
    # a letter after a statement that begins a new clause, or is no option, is not a second answer
    ("The answer is (C), I am confident.", ABCD, "C"),
    ("The answer is (B), I think.", A_TO_J, "B"),
    ("The answer is (B) and (C) is wrong.", ABCD, "B"),
    ("The answer is (B), (C) being a distractor.", ABCD, "B"),
    ("Answer: C, A being a distractor", ABCD, "C"),
    # a statement naming several letters states none
    ("Answer: (B) and (C)", ABCD, None),
    ("The answer is (B) or (C).", ABCD, None),
    ("The answer is A, B or C, I can't decide.", ABCD, None),
    ("The answer is (A), (B), (C), or (D)?", ABCD, None),
    # a bare letter said in words is still a bare letter
    ("I'd go with option D, since the others fail.", ABCD, None),
    ("B is correct.", ABCD, None),
    # no stated answer: the last "(X)" / "X)" among the question's letters
    ("After checking each option, I choose (C).", ABCD, "C"),
    ("So A) is wrong, B) is wrong, C) is right.", ABCD, "C"),
    ("Options A) and B) fail, C) works.", ABCD, "C"),
    ("(A) fails. Therefore (C)\u2014the electron.", ABCD, "C"),
    ("Options (A) 1, (B) 2, (C) 3 and (D) 4 all look plausible; hard to say.", ABCD, "D"),
    ("poly(A) tails are not involved here, so D) R-loops", ABCD, "D"),
    ("Only the (E)-isomer forms, which is choice (C).", A_TO_J, "C"),
    ("Working...\n(D)", ABCD, "D"),
    # ranges and lists of letters are no choice
    ("Let's examine each option (A-D).\nOption A fails. Option B fits.", ABCD, None),
    ("None of the options (A, B, C and D) is obviously wrong; B is closest.", ABCD, None),
    ("Options (A)\u2013(D) all mention ATP; B is closest.", ABCD, None),
    ("I'll go through options (A/B/C/D) one by one.", ABCD, None),
    ("Among (A)-(J), only B works.", A_TO_J, None),
    # never a bare capital letter on its own
    ("B", ABCD, None),
    ("Looking at the choices, B stands out to me.", ABCD, None),
    ("A bit of algebra gives 42. I think so.", ABCD, None),
    # letters that are not the question's, or not capitals
    ("The answer is (E)", ABCD, None),
    ("the answer is (b)", ABCD, None),
    # an echoed instruction: its placeholder and its list of letters are no answer
    ('Then write "The answer is (X)", where X is a letter.', ABCD, None),
    ('Reason step by step. Then, on the last line, write "The answer is (X)" where X is the single capital letter '
     "of the option you choose (A, B, C, D).", ABCD, None),
    ('Write "The answer is (X)", where X is the letter (A, B, C, D). 12 * 7 = 84.\nThe answer is (B)', ABCD, "B"),
    ("", ABCD, None),
]

# Real outputs of the embedded models (SmolLM2-135M, Gemma 3 270M) on examples/questions.jsonl,
# verbatim or cut where marked, each labelled by hand by the rule above.
REAL_CHOICES = [
    ("12 multiplied by 7 is equal to (12*7) = 84.\nThe answer is (D).", "D"),
    ('Step 1: Find the single letter of the option you choose (A)\n- The answer is A.\n\nStep 2: Now, find the single '
     'uppercase letter in the last line and put it after "X" in parentheses ("D") to separate them from each other. '
     "Thus, the correct answer is D.", "D"),
    ("The answer is (X)\n\nStep 1: Determine the options.\n[...]\nStep 2: Choose the correct answer (A) or (C). The "
     "answer I initially selected was (B), which was incorrect [...]. Therefore, I had to choose (X) as the correct "
     "option.\n\nStep 3: Write the answer with a single capital letter next to it. The answer is (A).", "A"),
    ("D) Mars", "D"),
    ("C) Lysosome\nStep-by-step reasoning:\n[...]\n7. Therefore, the answer is (D) Lysosomes are organelles with "
     "lysosomal functions such", "D"),
    ("The answer is (C)\n\nStep 1: [...] Step 2: [...] The answer is (A) Mitochondrion, as it produces most of a "
     "cell's ATP through cellular respiration.", "A"),
    ("The chemical symbol for sodium is Na.\n\nSo, the answer is (A) So.", "A"),
    ("1. The chemical symbol for sodium is Na.\n2. So (C) Sd (D)\n3. This answer must be the single capital letter "
     "of the option you chose (A, B, C, D).", "D"),
    ("Question: 12 times the number of seconds is less than (A) 80 and (B) 95 (C) 73 (D) 46\n\nReason step by step. "
     'Then, on the last line, write "The answer is (X)" where X is the single capital letter of the option you choose '
     "(A, B, C, D).\n?\n?", "D"),
]

# (response, expected extraction)
MATHS = [
    ("So $n = 33$. The answer is \\boxed{33}", "33"),
    ("The answer is \\boxed{033}", "033"),
    ("First I got \\boxed{2}, but that double counts; the answer is \\boxed{5}.", "5"),  # several boxed: the last
    ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
    ("\\boxed{\\frac{208}{2}}", "\\frac{208}{2}"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
    ("**Final Answer:** $\\boxed{\\dfrac{3}{4}}$", "\\dfrac{3}{4}"),
    ("<think>\\boxed{1}</think> The answer is \\boxed{2}", "2"),
    ("<think>so far \\boxed{7} maybe", None),  # cut off while thinking
    ("The answer is 49.", "49"),
    ("Answer: 204", "204"),
    ("so the answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("\\boxed{12", None),  # cut off
    ("no box and no stated value", None),
    ('write "The answer is" at the end:\n3^4 = 81', None),  # an echoed instruction
    ("the answer is indeed: 9", None),
    # a stated value is on the answer's own line: a list below an "Answer" heading is no value
    ("**Answer:**\n\n1. First, we compute the sum", None),
    ("The answer is:\n\n1. First", None),
    ("Final answer:\n2 cases to consider", None),
    ("Answer: 1) compute the sum", None),
    # ...but a value alone on the line after "Answer:" is one
    ("The answer is:\n\n49", "49"),
    ("**Final Answer:**\n\n$49$", "49"),
    ("The answer is\n$\\frac{1}{2}$.", "\\frac{1}{2}"),
    # the instruction's placeholder is no answer, echoed or "answered"
    ("[...] Now we subtract this from $2^{5}$ [...] So, the final answer is $\\boxed{X}$.", None),  # real SmolLM2 output
    ('The answer is \\boxed{49}.\n(Format: write "The answer is \\boxed{X}", where X is your final answer.)', "49"),
    ("$X = X + 6\\times x \\Rightarrow X = \\boxed{4}$", "4"),  # real SmolLM2 output
    ("So the final answer is $\\boxed{\\textrm{X}}$.", None),  # real SmolLM2 output
]


@pytest.mark.parametrize("text, letters, expected", CHOICES)
def test_extract_choice(text, letters, expected):
    assert extract_choice(text, letters) == expected


def test_a_verbatim_echo_of_the_question_is_no_answer():
    question = "What is 15 + 27? The options are: (A) 32 (B) 42 (C) 52 (D) 43"
    echo = f"Question: {question}\n\nLet me think about this."
    assert extract_choice(echo, ABCD) == "D"  # without the question, the reference's rule reads its last marker
    assert extract_choice(echo, ABCD, question) is None
    assert extract_answer(echo + "\nThe answer is (B)", MC, ABCD, question) == "B"


@pytest.mark.parametrize("text, expected", REAL_CHOICES)
def test_extract_choice_from_real_small_model_outputs(text, expected):
    assert extract_choice(text, ABCD) == expected


@pytest.mark.parametrize("text, expected", MATHS)
def test_extract_math(text, expected):
    assert extract_math(text) == expected


@pytest.mark.parametrize(
    "text, fmt, letters, expected",
    [
        ("The answer is (B)", MC, ABCD, "B"),
        ("The answer is (B)", MC, None, None),  # no letters: nothing is a valid choice
        ("The answer is \\boxed{7}", MATH, None, "7"),
        ("The answer is: Paris", FREE, None, "Paris"),
        (None, MC, ABCD, None),
        ("", MATH, None, None),
    ],
)
def test_extract_answer_dispatches_on_the_format(text, fmt, letters, expected):
    assert extract_answer(text, fmt, letters) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{33}", "33"),
        ("\\boxed{\\frac{1}{2}} then \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("\\fbox{7}", "7"),
        ("\\boxed{}", None),
        ("\\boxed{12", None),
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Reasoning.\nThe answer is: Paris.", "Paris"),
        ("Paris is the capital.\nSo Paris", "So Paris"),
        ("<think>The answer is: Lyon</think>The answer is: Paris", "Paris"),
        ('Then write "The answer is: X", where X is your final answer in a few words.\nParis', "Paris"),
        ("I am not sure.\nThe answer is: X", None),  # the placeholder copied: nothing stated
        ("The answer is: **X**.", None),
        ("", None),
    ],
)
def test_extract_free(text, expected):
    assert extract_free(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("a</think>b</think>c", "c"), ("<think>unfinished", ""), ("no trace", "no trace"), ("</think>", "")],
)
def test_strip_reasoning(text, expected):
    assert strip_reasoning(text) == expected


@pytest.mark.parametrize(
    "pred, gold, fmt, ok",
    [
        ("B", "B", MC, True),
        ("B", "(b)", MC, True),
        ("A", "B", MC, False),
        (None, "B", MC, False),  # unparsable counts as wrong
        ("033", "33", MATH, True),
        ("\\frac{208}{2}", "104", MATH, True),
        ("0.5", "\\frac{1}{2}", MATH, True),
        ("\\dfrac{3}{4}", "0.75", MATH, True),
        ("1,000", "1000", MATH, True),
        ("34", "33", MATH, False),
        ("1+x^2", "x^2+1", MATH, True),  # symbolic: math-verify
        ("\\sqrt{4}", "2", MATH, True),
        ("\\frac{1}{3}", "0.33", MATH, False),
        ("80", "080 or 081 (both were accepted)", MATH, True),
        ("081", "080 or 081 (both were accepted)", MATH, True),
        ("82", "080 or 081 (both were accepted)", MATH, False),
        ("10^{10^{10}}", "1", MATH, False),  # a number too large to compute is decided at once
        ("The capital city of France is Paris.", "Paris", FREE, True),
        ("paris", "Paris", FREE, True),
        ("Lyon", "Paris", FREE, False),
        ("Not Paris but " + "word " * 20, "Paris", FREE, False),  # long text does not count
    ],
)
def test_is_correct(pred, gold, fmt, ok):
    assert is_correct(pred, gold, fmt) is ok


@pytest.mark.parametrize(
    "response, question, gold, correct",
    [
        ("15 + 27 = 42.\n**The answer is (B)**", "What is 15 + 27? The options are: (A) 32 (B) 42 (C) 52 (D) 43", "B", True),
        ("So $m+n = 33$, i.e. \\boxed{033}.", "Find $m+n$.", "33", True),
        ("We get $\\boxed{\\frac{208}{2}}$", "Compute $a$.", "104", True),
        ("The answer is (C)", "Which? The options are: (A) x (B) y (C) z", "B", False),
        ("I cannot decide.", "Which? The options are: (A) x (B) y (C) z", "B", False),
    ],
)
def test_a_response_is_scored_as_its_truth(response, question, gold, correct):
    fmt, letters = detect_format(question, gold)
    assert is_correct(extract_answer(response, fmt, letters), gold, fmt) is correct


def test_math_scores_the_same_on_any_thread():
    """A host that scores off the main thread must get what the CLI gets."""
    cases = [("033", "33"), ("1+x^2", "x^2+1"), ("\\sqrt{4}", "2"), ("\\frac{1}{3}", "0.33"), ("2x", "x+x")]
    on_main = [is_correct(p, g, MATH) for p, g in cases]
    assert on_main == [True, True, True, False, True]
    with ThreadPoolExecutor(2) as pool:
        off_main = list(pool.map(lambda c: (threading.current_thread() is not threading.main_thread(), is_correct(c[0], c[1], MATH)), cases))
    assert [ok for _, ok in off_main] == on_main and all(t for t, _ in off_main)


@pytest.mark.parametrize(
    "question, expected",
    [
        ("Pick one. The options are: (A) x (B) y (C) z", list("ABC")),
        # a marker in the stem before the options block does not count
        ("Stem mentions (C) first. The options are: (A) 1 (B) 2", list("AB")),
        # a later "(A)" does not restart the run
        ("The options are: (A) x (B) see (A) again (C) z", list("ABC")),
        ("Only (A) here", []),
        ("a) b) c) lower-case stem The options are: (A) abc (B) bcd (C) ac (D) bd", ABCD),
        # chemistry and notation glued to a word, or stereo-descriptors, are not markers
        ("Which is not involved? The options are: (A) lariat (B) poly(A) tail (C) antisense (D) R-loops", ABCD),
        ("The options are: (A) B = (E)-1-bromohex-2-ene (B) B = 2-bromohexan-3-ol", list("AB")),
        ("The options are: (A) O(DN) (B) O(D^3) (C) O(1)", list("ABC")),
        ("The options are: (A) P(R) = 2/3 (B) P(R) = 5/14", list("AB")),
        # options as lines, without a header
        ("Which is prime?\nA) 4\nB) 6\nC) 7", list("ABC")),
        ("Which is prime?\nA. 4\nB. 7", list("AB")),
        # a header inside an option's text is not the options' header
        ("Which is a derivative? The options are: (A) Stocks (B) Bonds (C) Options: calls and puts (D) Cash", ABCD),
        # inline "X." / "X)" markers, after a header only
        ("Pick one. The options are: A. 4 B. 7 C. 9", list("ABC")),
        ("Pick one. Options: A) 4 B) 7 C) 9", list("ABC")),
        ("Take vitamin C. B. subtilis grows. A. niger too.", []),
        ("Which vitamin? The choices are: (a) Vitamin A. (b) Vitamin B. (c) Vitamin C. (d) none", []),
        ("Find x such that f(x)=0. Choices: $x^2$, $x^3$. Point A. B. C. are collinear.", []),
        # figure code names points (A), (B): not options
        ("Find the area. [asy] draw((A)--(B)); label(\"(A)\", (0,0)); label(\"(B)\", (1,0)); [/asy]", []),
    ],
)
def test_option_letters(question, expected):
    assert option_letters(question) == expected


@pytest.mark.parametrize(
    "question, gold, fmt",
    [
        ("Which? The options are: (A) x (B) y", "A", MC),
        ("Which? (A) x (B) y", None, MC),
        # a numeric gold that is not a letter: never scored as a letter
        ("Which is larger? (A) 5 (B) 6", "6", MATH),
        ("Compute $2^{10}$.", None, MATH),
        ("How many integers below 100 are prime?", "25", MATH),
        ("Points (A) and (B) lie on a circle. How many chords? [asy] dot((A)); dot((B)); [/asy]", "40", MATH),
        ("Is poly(A) RNA stable? Answer in a word.", None, FREE),
        ("Who wrote Hamlet?", "Shakespeare", FREE),
        ("Who wrote Hamlet?", None, FREE),
    ],
)
def test_detect_format(question, gold, fmt):
    assert detect_format(question, gold)[0] is fmt


def test_gold_alternatives():
    assert gold_alternatives("080 or 081 (both were accepted)") == ["080", "081"]
    assert gold_alternatives("33") == ["33"]
    assert gold_alternatives("\\frac{1}{2}") == ["\\frac{1}{2}"]
    assert gold_alternatives("12 (cm)") == ["12"]
    assert gold_alternatives("(a-b)(a+b)") == ["(a-b)(a+b)"]


def test_a_question_of_many_headers_has_no_options():
    # only the last headers are tried (trying each one made these take a minute)
    assert option_letters("Options: " * 20000) == [] and option_letters("options: (A) " * 15000) == []


UPSTREAM_SETS = [("GPQA_train.json", MC, 249), ("MMLU_Pro_train.json", MC, 350),
                 ("MedMCQA_train.json", MC, 504), ("AIME24_train.json", MATH, 354)]  # fmt: skip


@pytest.mark.parametrize("name, fmt, n", UPSTREAM_SETS, ids=[s[0] for s in UPSTREAM_SETS])
def test_format_detection_on_the_upstream_sets_is_exact(name, fmt, n):
    """Every question of the four reference validation sets: its format, and for multiple
    choice the gold letter among the detected letters, which are exactly the block's
    "(X) " markers A, B, C, ... in order."""

    records = json.loads((UPSTREAM / name).read_text())
    assert len(records) == n
    for i, r in enumerate(records):
        detected, letters = detect_format(r["question"], r["gold_answer"])
        assert detected is fmt, (name, i)
        if fmt is MC:
            assert letters == [chr(ord("A") + j) for j in range(len(letters))] == listed_letters(r["question"]), (name, i)
            assert r["gold_answer"] in letters, (name, i)
        else:
            assert letters == []


@pytest.mark.parametrize(
    "value",
    ["x^2+y^2", "2^2 \\cdot 3^2", "3^{2^2}", "2^{100000}", "10000!", "\\binom{1000}{500}", "(x+1)^{100}", "x^{n+1}",
     "x^{-1}", "(1+n)!", "\\frac{1}{n+1}\\binom{2n}{n}", "2x^{2024}", "(-1)^{2024}", "\\left(\\frac{1}{2}\\right)^{200}"],
)  # fmt: skip
def test_ordinary_answers_are_compared_symbolically(value):
    from symoe_agents.scoring import symbolic_checkable

    assert symbolic_checkable(value)


@pytest.mark.parametrize(
    "value",
    ["9^9^9", "9^{9^{9}}", "10^{1000000}", "(10^9)!", "\\left(10^{9}\\right)!", "\\Gamma(10^{9})", "100001!", "3^{12!}",
     "3^{999999999/1}", "3^{99999 \\cdot 99999}", "3^{-999999999}", "(x+y+z)^{100}", "(a+b+c+d)^{30}", "(x+1)^{999}"],
)  # fmt: skip
def test_answers_sympy_cannot_finish_are_left_to_the_normaliser(value):
    """Each of these kept math-verify (timeouts off) busy for minutes or for ever here."""
    from symoe_agents.scoring import symbolic_checkable

    assert not symbolic_checkable(value)
    assert is_correct(value, value, MATH)  # the normaliser still finds a thing equal to itself


def test_a_copied_math_placeholder_is_no_value():
    assert extract_math("The answer is X.") is None
    assert extract_math("So the answer is 49.\nThe answer is X") == "49"
