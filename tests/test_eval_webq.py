"""WebQuestions: the paper's strict exact match with the first answer vs the lenient normalized match."""

import pytest

from hizfo.evaluation.webq import first_line, normalize_answer, strict_exact_match, webq_example, webq_scores


@pytest.mark.parametrize("raw, norm", [
    ("The United States", "united states"),
    ("  Barack   Obama. ", "barack obama"),
    ("an apple a day", "apple day"),
    ("Theater", "theater"),               # "the" only as a whole word
    ("St. Louis, Missouri", "st louis missouri"),
    ("A", ""),
    ("Jamaican English!!", "jamaican english"),
])
def test_normalize(raw, norm):
    assert normalize_answer(raw) == norm


GOLDS = ["Jamaican English", "Jamaican Creole English Language"]


@pytest.mark.parametrize("generation, strict, lenient", [
    (" Jamaican English ", 1.0, 1.0),               # stripped, then identical to the first answer
    ("jamaican english", 0.0, 1.0),                 # strict is case-sensitive
    ("Jamaican English.", 0.0, 1.0),                # ... and keeps punctuation
    ("Jamaican Creole English Language", 0.0, 1.0),  # strict only accepts the FIRST answer
    ("Jamaican English\nQuestion: next", 0.0, 1.0),  # strict compares the whole generation
    ("English", 0.0, 0.0),
])
def test_strict_first_answer_vs_lenient_any_normalized(generation, strict, lenient):
    assert webq_example(generation, GOLDS) == {"accuracy": strict, "webq_any_normalized": lenient}


def test_means_and_helpers():
    scores = webq_scores(["Jamaican English", "the jamaican english", "x"], [GOLDS, GOLDS, GOLDS])
    assert scores == {"accuracy": pytest.approx(1 / 3), "webq_any_normalized": pytest.approx(2 / 3)}
    assert strict_exact_match("Paris", []) == 0.0
    assert first_line("\n  Paris\nLondon") == "Paris" and first_line("   ") == ""
    with pytest.raises(ValueError):
        webq_scores(["x"], [])
