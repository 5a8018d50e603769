"""ROUGE: hand-computed F1 values, stemming on/off, reference aggregation first / mean / max."""

import pytest

from hizfo.evaluation.rouge import rouge_example, rouge_metrics, rouge_scores


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


def test_stemming_sensitive_pair_scored_both_ways():
    # pred "the dog is running" (4 tokens), ref "the dog runs" (3). Without stemming only "the", "dog"
    # match: P 2/4, R 2/3 -> F1 4/7. Porter stems tokens longer than 3 characters: running -> run,
    # runs -> run, so 3 match: P 3/4, R 1 -> F1 6/7. Bigrams: only "the dog" matches either way
    # (P 1/3, R 1/2 -> F1 2/5).
    pred, ref = "the dog is running", ["the dog runs"]
    plain, stemmed = rouge_example(pred, ref, stem=False), rouge_example(pred, ref, stem=True)
    assert plain["rouge1"] == pytest.approx(100 * 4 / 7) and stemmed["rouge1"] == pytest.approx(100 * 6 / 7)
    assert plain["rouge2"] == pytest.approx(40.0) and stemmed["rouge2"] == pytest.approx(40.0)
    assert plain["rougeL"] == pytest.approx(100 * 4 / 7) and stemmed["rougeL"] == pytest.approx(100 * 6 / 7)
    assert rouge_example("Running dogs!", ["run dog"], stem=True)["rouge1"] == pytest.approx(100.0)
    assert rouge_example("Running dogs!", ["run dog"])["rouge1"] == 0.0  # the paper's default: no stemming


def test_three_references_first_mean_max():
    # pred "the cat sat on the mat" (6 tokens, 5 bigrams) against
    #   r0 "a dog barked"          rouge1 0               rouge2 0
    #   r1 "the cat is on the mat" rouge1 5/6 (above)     rouge2 3/5
    #   r2 "the cat sat"           rouge1 P 1/2 R 1: 2/3  rouge2 P 2/5 R 1: 4/7
    pred, refs = "the cat sat on the mat", ["a dog barked", "the cat is on the mat", "the cat sat"]
    r1 = [0.0, 100 * 5 / 6, 100 * 2 / 3]
    r2 = [0.0, 60.0, 100 * 4 / 7]
    first, mean, best = (rouge_example(pred, refs, agg) for agg in ("first", "mean", "max"))
    assert first["rouge1"] == 0.0 and first["rouge2"] == 0.0
    assert mean["rouge1"] == pytest.approx(sum(r1) / 3) and mean["rouge2"] == pytest.approx(sum(r2) / 3)
    assert best["rouge1"] == pytest.approx(100 * 5 / 6) and best["rouge2"] == pytest.approx(60.0)
    with pytest.raises(ValueError, match="first, mean|rouge_reference_aggregation"):
        rouge_example(pred, refs, "median")


def test_max_is_taken_per_rouge_type():
    # ref A shares all unigrams in a scrambled order (rouge1 100, rouge2 low); ref B shares a long
    # bigram run but fewer unigrams. Each type takes its own best reference.
    pred = "a b c d"
    ref_a, ref_b = "d c b a", "a b c x y"
    best = rouge_example(pred, [ref_a, ref_b], "max")
    sa, sb = rouge_example(pred, [ref_a]), rouge_example(pred, [ref_b])
    for key in ("rouge1", "rouge2", "rougeL"):
        assert best[key] == pytest.approx(max(sa[key], sb[key]))
    assert sa["rouge1"] > sb["rouge1"] and sb["rouge2"] > sa["rouge2"]


def test_paper_columns_and_lenient_variants_side_by_side():
    preds = ["the dog is running", "nothing in common"]
    refs = [["a cat", "the dog runs"], ["zebra"]]
    out = rouge_metrics(preds, refs, "first")
    assert out["rouge1"] == 0.0  # first reference "a cat" shares nothing, no stemming
    assert out["rouge1_max_stem"] == pytest.approx(100 * 6 / 7 / 2)  # best reference, stemmed, mean of 2
    assert set(out) == {"rouge1", "rouge2", "rougeL", "rouge1_max_stem", "rouge2_max_stem", "rougeL_max_stem"}
    assert rouge_scores(preds, refs, "mean")["rouge1"] == pytest.approx(100 * 4 / 7 / 2 / 2)
    with pytest.raises(ValueError):
        rouge_scores(["x"], [])
