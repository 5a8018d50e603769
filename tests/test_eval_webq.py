"""WebQuestions: SQuAD-style normalization, accuracy vs exact match, prediction cleaning."""

import pytest

from hizfo.evaluation.webq import clean_prediction, normalize_answer, webq_example, webq_scores


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


def test_accuracy_matches_any_gold_exact_match_is_strict():
    golds = ["Jamaican English", "Jamaican Creole English Language"]
    assert webq_example("jamaican english.", golds) == {"accuracy": 1.0, "exact_match": 0.0}
    assert webq_example("Jamaican English", golds) == {"accuracy": 1.0, "exact_match": 1.0}
    assert webq_example("English", golds) == {"accuracy": 0.0, "exact_match": 0.0}
    scores = webq_scores(["the Jamaican English", "English"], [golds, golds])
    assert scores == {"accuracy": 0.5, "exact_match": 0.0}


def test_clean_prediction_first_line_and_eos():
    assert clean_prediction(" Paris</s> question: next", "</s>") == "Paris"
    assert clean_prediction("\n  Paris\nLondon") == "Paris"
    assert clean_prediction("   ") == ""
