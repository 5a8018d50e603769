"""ROUGE: hand-computed F1 values, stemming, max over references, the single-reference option."""

import pytest

from hizfo.evaluation.rouge import clean_prediction, rouge_corpus, rouge_example


def f1(overlap: int, n_pred: int, n_ref: int) -> float:
    p, r = overlap / n_pred, overlap / n_ref
    return 100 * 2 * p * r / (p + r)


def test_hand_computed_pair():
    # pred: the cat sat on the mat   ref: the cat is on the mat   (6 tokens each)
    # unigrams: the x2, cat, on, mat shared -> 5 of 6 both ways -> F1 5/6
    # bigrams: pred {the cat, cat sat, sat on, on the, the mat}, ref {the cat, cat is, is on, on the,
    #          the mat}: 3 shared of 5 -> F1 3/5
    # LCS: "the cat on the mat" = 5 -> F1 5/6
    s = rouge_example("the cat sat on the mat", ["the cat is on the mat"])
    assert s["rouge1"] == pytest.approx(100 * 5 / 6)
    assert s["rouge2"] == pytest.approx(100 * 3 / 5)
    assert s["rougeL"] == pytest.approx(100 * 5 / 6)


def test_hand_computed_unequal_lengths():
    # pred "the cat sat" (3), ref "the cat sat on the mat" (6): unigram overlap 3 -> P 1, R 1/2;
    # bigrams 2 of 2 pred / 5 ref; LCS 3.
    s = rouge_example("the cat sat", ["the cat sat on the mat"])
    assert s["rouge1"] == pytest.approx(f1(3, 3, 6))
    assert s["rouge2"] == pytest.approx(f1(2, 2, 5))
    assert s["rougeL"] == pytest.approx(f1(3, 3, 6))


def test_stemmer_and_case_and_punctuation():
    # use_stemmer=True: running->run, dogs->dog; the tokenizer lowercases and drops punctuation.
    assert rouge_example("Running dogs!", ["run dog"])["rouge1"] == pytest.approx(100.0)


def test_max_over_references_and_single_reference_option():
    pred = "the cat sat on the mat"
    bad, good = "a dog barked loudly", "the cat is on the mat"
    multi = rouge_example(pred, [bad, good])
    assert multi == pytest.approx(rouge_example(pred, [good]))
    single = rouge_example(pred, [bad, good], multi_reference=False)
    assert single == pytest.approx(rouge_example(pred, [bad]))
    assert single["rouge1"] == 0.0


def test_max_is_taken_per_rouge_type():
    # ref A shares all unigrams in a scrambled order (rouge1 100, rouge2 low); ref B shares a long
    # bigram run but fewer unigrams. Each type takes its own best reference.
    pred = "a b c d"
    ref_a, ref_b = "d c b a", "a b c x y"
    best = rouge_example(pred, [ref_a, ref_b])
    sa, sb = rouge_example(pred, [ref_a]), rouge_example(pred, [ref_b])
    for key in ("rouge1", "rouge2", "rougeL"):
        assert best[key] == pytest.approx(max(sa[key], sb[key]))
    assert sa["rouge1"] > sb["rouge1"] and sb["rouge2"] > sa["rouge2"]


def test_corpus_is_mean_over_examples_and_cleaning():
    preds = ["the cat sat on the mat", "nothing in common"]
    refs = [["the cat is on the mat"], ["zebra"]]
    corpus = rouge_corpus(preds, refs)
    assert corpus["rouge1"] == pytest.approx(100 * 5 / 6 / 2)
    assert clean_prediction("  a summary.</s> junk after", "</s>") == "a summary."
    with pytest.raises(ValueError):
        rouge_corpus(["x"], [])
