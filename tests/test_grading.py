"""Answer extraction (s1's rules) and grading on known tricky strings."""
import pytest

from weightsurgeon.recipes.eval.grading import (
    extract_answer,
    grade,
    last_boxed,
    math_equal,
    normalize_integer,
    normalize_letter,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{\frac{a}{b^{2}}} and", r"\frac{a}{b^{2}}"),
        (r"\boxed{1} then finally \boxed{2}", "2"),
        (r"\boxed{\left\{1,2\right\}}", r"\left\{1,2\right\}"),
        (r"$\boxed 5$", "5"),
        (r"\fbox{C}", "C"),
        (r"\boxed{1} and a broken \boxed{2", "1"),
        (r"\boxed{}", ""),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extraction_order_is_boxed_then_answer_line():
    assert extract_answer("Answer: 5\nbut really \\boxed{6}") == ("6", "boxed")
    assert extract_answer("first Answer: 4\nFinal Answer: 5\nthanks") == ("5", "answer-line")
    assert extract_answer("nothing to see") == (None, "none")


@pytest.mark.parametrize(
    "text, value",
    [("033", 33), ("$33$", 33), (r"\text{33}", 33), ("33.", 33), ("1,000", 1000), (r"\$1,000", 1000),
     ("{204}", 204), ("45^\\circ", 45), ("33.0", 33), ("3.5", None), ("x=3", None), (None, None)],
)
def test_normalize_integer(text, value):
    assert normalize_integer(text) == value


@pytest.mark.parametrize(
    "text, letter",
    [("(B)", "B"), ("B.", "B"), (r"\text{C}", "C"), (r"\textbf{(D)}", "D"), ("B) 42 joules", "B"),
     ("option b", "B"), ("d", "D"), ("E", None), ("about 7", None), ("a lot", None), ("", None)],
)
def test_normalize_letter(text, letter):
    assert normalize_letter(text, num_choices=4) == letter


@pytest.mark.parametrize(
    "gold, predicted, same",
    [
        (r"\frac{1}{2}", "0.5", True),
        (r"\frac{1}{2}", r"\dfrac{1}{2}", True),
        (r"\frac{1}{2}", r"\dfrac12", True),
        (r"\frac{1}{2}", r"\frac{1}{3}", False),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})", True),
        ("x(x+2)", "x^2+2x", True),
        (r"2\sqrt{2}", r"\sqrt{8}", True),
        ("10", "11", False),
        (r"\text{Evelyn}", "Evelyn", True),
        (r"5\text{ cm}", "5", True),
        (r"\left[ -\frac{1}{2}, 1 \right)", r"[-\frac12,1)", True),
        (r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\begin{pmatrix}1\\2\end{pmatrix}", True),
        (r"90^\circ", "90", True),
    ],
)
def test_math_equal_uses_math_verify(gold, predicted, same):
    assert math_equal(gold, predicted) is same


def test_grade_per_kind():
    assert grade("integer", "... \\boxed{033}", "33").correct
    assert grade("integer", "Answer: 33.", "33").correct
    assert not grade("integer", "\\boxed{34}", "33").correct
    assert grade("math", "so \\boxed{\\dfrac{1}{2}}.", "\\frac{1}{2}").correct
    assert grade("choice", "\\boxed{C}", "C").correct
    assert grade("choice", "Answer: (B)", "B").correct
    assert not grade("choice", "Answer: (B)", "C").correct
    # no marker at all: MATH500 falls back to math-verify's own search of the text
    g = grade("math", "the result is $\\frac{1}{2}$", "\\frac{1}{2}")
    assert g.correct and g.method == "math-verify-fallback"
    assert not grade("integer", "I do not know", "7").correct
    assert grade("integer", "\\boxed{\\frac{66}{2}}", "33").correct  # math-verify decides expressions
    assert not grade("integer", "\\boxed{3.5}", "3").correct


def test_choice_given_as_text_or_letter():
    choices = ("proton", "electron", "neutron", "photon")
    assert grade("choice", "\\boxed{\\text{Electron}}", "B", choices=choices).normalized == "B"
    assert grade("choice", "Answer: B, because it is negative", "B", choices=choices).correct
    assert not grade("choice", "\\boxed{E}", "B", choices=choices).correct
    assert not grade("choice", "\\boxed{quark}", "B", choices=choices).correct
