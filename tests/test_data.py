"""Task data: release-file loaders (against the real shared data), tokenization and collation."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.data import (
    IGNORE_INDEX,
    TASK_SPLITS,
    Example,
    PromptDataset,
    TrainDataset,
    TruncationStats,
    collate_generation,
    collate_train,
    load_split,
    load_task,
    parse_target_value,
    resolve_data_dir,
    sources,
    special_prefix,
    subsample,
    tasks,
    tokenize_example,
    tokenize_prompt_for_generation,
)
from hizfo.models.loading import byte_level_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("HIZFO_DATA_DIR") or sources.DEFAULT_DATA_DIR)
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data dir {DATA} is absent "
                                                          f"(set HIZFO_DATA_DIR to the shared data)")


def task_cfg(name: str, **overrides):
    cfg = OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


@pytest.fixture(scope="module")
def tok():
    return byte_level_tokenizer()


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- real files

@needs_data
@pytest.mark.parametrize("name,split,count", [
    ("scitldr", "train", 1992), ("scitldr", "validation", 619), ("scitldr", "test", 618),
    ("dialogsum", "train", 12460), ("dialogsum", "validation", 500), ("dialogsum", "test", 500),
    ("webquestions", "train", 3778 - 378), ("webquestions", "validation", 378),
    ("webquestions", "test", 2032), ("gsm8k", "train", 7473), ("gsm8k", "test", 1319),
    ("math500", "test", 500), ("humaneval", "test", 164),
])
def test_record_counts_match_the_release(name, split, count):
    exs = load_split(task_cfg(name), split, DATA)
    assert len(exs) == count
    assert all(ex.references and ex.meta["split"] == split for ex in exs)


@needs_data
def test_scitldr_prompt_target_and_references():
    raw = [json.loads(line) for line in open(DATA / "scitldr" / "test.jsonl", encoding="utf-8")]
    exs = load_task("scitldr", "test", DATA)
    assert exs[0].prompt == " ".join(s.strip() for s in raw[0]["source"]) + " TL;DR:"
    assert exs[0].target == " " + raw[0]["target"][0].strip()
    assert [len(e.references) for e in exs] == [len(r["target"]) for r in raw]
    assert sum(len(e.references) for e in exs) / len(exs) == pytest.approx(3.18, abs=0.01)
    train = load_task("scitldr", "train", DATA)
    assert all(len(e.references) == 1 and e.target == " " + e.references[0] for e in train)


@needs_data
def test_dialogsum_train_from_zip_and_three_test_references():
    train = load_task("dialogsum", "train", DATA)
    assert (train[0].meta["id"], train[-1].meta["id"]) == ("train_0", "train_12459")
    assert train[0].prompt.startswith("#Person1#: Hi, Mr. Smith. I'm Doctor Hawkins.")
    assert train[0].prompt.endswith(" TL;DR:") and train[0].target.startswith(" ")
    raw = [json.loads(line) for line in open(DATA / "dialogsum" / "dialogsum.test.jsonl", encoding="utf-8")]
    test = load_task("dialogsum", "test", DATA)
    assert all(len(e.references) == 3 for e in test)
    assert test[0].references == [raw[0][f"summary{k}"].strip() for k in (1, 2, 3)]
    assert test[0].meta["topics"] == [raw[0][f"topic{k}"] for k in (1, 2, 3)]
    assert test[0].prompt == raw[0]["dialogue"].strip() + " TL;DR:"


@needs_data
def test_webquestions_answers_on_known_lines():
    full = load_task("webquestions", "train", DATA, eos_token="</s>", validation_fraction=0.0)
    assert len(full) == 3778
    assert full[0].references == ["Jazmyn Bieber", "Jaxon Bieber"]
    assert full[0].prompt == "question: what is the name of justin bieber brother?</s> answer:"
    assert full[0].target == " Jazmyn Bieber"
    assert full[1].references == ["Padmé Amidala"]
    assert full[3].references == ["Bahamas"]  # unquoted description
    assert '"Hope" is the thing with feathers' in full[1744].references  # raw inner quotes
    assert len(full[1744].references) == 10
    test = load_task("webquestions", "test", DATA, eos_token="<|endoftext|>")
    assert test[0].references == ["Jamaican Creole English Language", "Jamaican English"]
    assert test[0].prompt.endswith("?<|endoftext|> answer:")


@needs_data
def test_webquestions_validation_is_a_disjoint_seeded_carve_out():
    cfg = task_cfg("webquestions")
    train, val = load_split(cfg, "train", DATA), load_split(cfg, "validation", DATA)
    train_ids, val_ids = {e.meta["id"] for e in train}, {e.meta["id"] for e in val}
    assert not train_ids & val_ids and len(train_ids | val_ids) == 3778
    assert [e.meta["id"] for e in load_split(cfg, "validation", DATA)] == [e.meta["id"] for e in val]
    other = load_split(task_cfg("webquestions", validation_seed=1), "validation", DATA)
    assert {e.meta["id"] for e in other} != val_ids
    assert len(load_split(task_cfg("webquestions", validation_fraction=0.2), "validation", DATA)) == 756


@needs_data
def test_gsm8k_and_math500_fields():
    g = load_task("gsm8k", "train", DATA)[0]
    assert g.prompt.startswith("Question: Natalia sold clips") and g.prompt.endswith("?\nAnswer:")
    assert g.target.startswith(" Natalia sold 48/2") and g.target.endswith("#### 72")
    assert g.references == ["72"] and g.meta["answer"] == g.target[1:]
    m = load_task("math500", "test", DATA)[0]
    assert m.prompt.startswith("Question: Convert the point $(0,3)") and m.prompt.endswith("\nAnswer:")
    assert m.references == ["\\left( 3, \\frac{\\pi}{2} \\right)"]
    assert (m.meta["subject"], m.meta["level"]) == ("Precalculus", 2)
    assert m.meta["id"] == "test/precalculus/807.json"
    assert "\\boxed" in m.meta["solution"]


def test_humaneval_from_the_package():
    exs = load_task("humaneval", "test")
    assert len(exs) == 164
    e = exs[0]
    assert e.meta["task_id"] == "HumanEval/0" and e.meta["entry_point"] == "has_close_elements"
    assert e.prompt == e.meta["code_prompt"] and e.target == e.meta["canonical_solution"]
    assert "def check" in e.meta["test"] and "cue" not in e.meta
    qa = load_split(task_cfg("humaneval", prompt_style="qa"), "test")[0]
    assert qa.prompt == f"Question: {e.prompt.strip()}\nAnswer:" and qa.meta["cue"] == "\nAnswer:"


# --------------------------------------------------------------------------- errors and config

@needs_data
def test_missing_split_names_the_existing_ones():
    with pytest.raises(ValueError, match=r"math500 has no 'train' split; its splits are \['test'\]"):
        load_task("math500", "train", DATA)
    with pytest.raises(ValueError, match=r"gsm8k has no 'validation' split.*\['train', 'test'\]"):
        load_split(task_cfg("gsm8k"), "validation", DATA)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_split(task_cfg("scitldr"), "dev", DATA)
    with pytest.raises(ValueError, match="webquestions validation split is empty"):
        load_split(task_cfg("webquestions", validation_fraction=0.0), "validation", DATA)


def test_missing_data_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_split(task_cfg("gsm8k"), "train", tmp_path)
    msg = str(err.value)
    for part in ("'gsm8k/train.jsonl'", str(tmp_path), "HIZFO_DATA_DIR", "data.dir", "HF_HUB_OFFLINE"):
        assert part in msg
    with pytest.raises(FileNotFoundError, match="DialogSum_Data.zip' \\(member 'DialogSum_Data/dialogsum"):
        load_task("dialogsum", "train", tmp_path)


def test_hub_failure_is_reported_and_hub_records_are_used(tmp_path, monkeypatch):
    import datasets

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)

    def unreachable(*a, **k):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(FileNotFoundError, match="hub fallback failed: ConnectionError"):
        load_task("gsm8k", "test", tmp_path)
    fake = [{"question": "q?", "answer": "a\n#### 7"}]
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id, config, split: fake)
    [ex] = load_task("gsm8k", "test", tmp_path)
    assert ex.references == ["7"] and ex.prompt == "Question: q?\nAnswer:"


def test_dialogsum_hub_test_rows_are_regrouped():
    rows = [{"id": "test_0_1", "dialogue": "d0", "summary": "s1", "topic": "t1"},
            {"id": "test_0_2", "dialogue": "d0", "summary": "s2", "topic": "t2"},
            {"id": "test_1_1", "dialogue": "d1", "summary": "u1", "topic": "v1"}]
    out = tasks._dialogsum_hub_test(rows)
    assert out[0] == {"fname": "test_0_1", "dialogue": "d0", "summary1": "s1", "topic1": "t1",
                      "summary2": "s2", "topic2": "t2"}
    assert out[1]["summary1"] == "u1" and len(out) == 2


def test_resolve_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HIZFO_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert resolve_data_dir(None) == tmp_path / "env"
    assert resolve_data_dir("") == tmp_path / "env"
    monkeypatch.delenv("HIZFO_DATA_DIR")
    expected = sources.DEFAULT_DATA_DIR if sources.DEFAULT_DATA_DIR.is_dir() else None
    assert resolve_data_dir(None) == expected


def test_zip_reader_uses_literal_eval_not_eval(tmp_path):
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("D/train.jsonl", "{'fname': 'a', 'summary': \"it's\"}\n\n{'fname': 'b'}\n")
        zf.writestr("D/bad.jsonl", "__import__('os').getcwd()\n")
    assert sources.read_zip_pyrepr_lines(path, "D/train.jsonl") == [
        {"fname": "a", "summary": "it's"}, {"fname": "b"}]
    with pytest.raises(ValueError):
        sources.read_zip_pyrepr_lines(path, "D/bad.jsonl")


def test_parse_target_value_forms():
    assert parse_target_value('(list (description "Jazmyn Bieber") (description Jaxon))') == [
        "Jazmyn Bieber", "Jaxon"]
    assert parse_target_value('(list (description ""Hope" is it") (description "A (b) c"))') == [
        '"Hope" is it', "A (b) c"]
    with pytest.raises(ValueError, match="unexpected WebQuestions targetValue"):
        parse_target_value("(description X)")


def test_subsampling_is_a_deterministic_random_subset():
    exs = [Example(prompt=str(i), target=" x", references=["x"]) for i in range(100)]
    a, b = subsample(exs, 10, seed=0), subsample(exs, 10, seed=0)
    assert [e.prompt for e in a] == [e.prompt for e in b]
    assert [int(e.prompt) for e in a] == sorted(int(e.prompt) for e in a)  # file order kept
    assert [e.prompt for e in a] != [str(i) for i in range(10)]  # not the first N
    assert [e.prompt for e in subsample(exs, 10, seed=1)] != [e.prompt for e in a]
    assert subsample(exs, None, 0) is exs and subsample(exs, 500, 0) is exs


@needs_data
def test_load_split_subsamples_train_and_eval_separately():
    cfg = task_cfg("gsm8k", max_train_examples=5, max_eval_examples=3, subsample_seed=4)
    assert len(load_split(cfg, "train", DATA)) == 5 and len(load_split(cfg, "test", DATA)) == 3
    assert [e.meta["id"] for e in load_split(cfg, "train", DATA)] == \
        [e.meta["id"] for e in subsample(load_task("gsm8k", "train", DATA), 5, 4)]


def test_task_configs_are_consistent():
    families = {"scitldr": "summarization", "dialogsum": "summarization", "webquestions": "qa",
                "gsm8k": "reasoning", "math500": "reasoning", "humaneval": "code"}
    lengths = {"scitldr": (512, 64), "dialogsum": (512, 128), "webquestions": (160, 64)}
    for name, family in families.items():
        cfg = task_cfg(name)
        assert cfg.name == name and cfg.family == family
        present = {s for s in ("train", "validation", "test") if cfg.splits[s] is not None}
        assert present == set(TASK_SPLITS[name])
        assert cfg.max_train_examples is None and cfg.max_eval_examples is None and cfg.subsample_seed == 0
        gen = cfg.generation
        if name in lengths:
            assert (cfg.max_input_len, cfg.max_output_len) == lengths[name]
            assert (gen.num_beams, gen.repetition_penalty, gen.length_penalty, gen.early_stopping) == \
                (4, 2.5, 1.0, True)
            assert gen.max_new_tokens == cfg.max_output_len
        else:
            assert gen.num_beams == 1 and gen.do_sample is False


# --------------------------------------------------------------------------- tokenization

def summary_example(source: str, summary: str) -> Example:
    return Example(prompt=f"{source} TL;DR:", target=f" {summary}", references=[summary],
                   meta={"cue": " TL;DR:"})


def test_tokenize_masks_exactly_the_prompt_and_appends_eos(tok):
    ex = summary_example("A short abstract.", "Short.")
    out = tokenize_example(tok, ex, 512, 64)
    n_prompt = len(ids(tok, ex.prompt))
    assert out["input_ids"] == ids(tok, ex.prompt + ex.target) + [tok.eos_token_id]
    assert out["labels"] == [IGNORE_INDEX] * n_prompt + ids(tok, ex.target) + [tok.eos_token_id]
    assert tok.decode(out["input_ids"]) == ex.prompt + ex.target + tok.eos_token


def test_long_source_is_cut_before_the_cue_and_target_is_kept(tok):
    ex = summary_example("word " * 300 + "END", "The summary.")
    stats = TruncationStats()
    out = tokenize_example(tok, ex, 100, 64, stats)
    n_prompt = sum(1 for label in out["labels"] if label == IGNORE_INDEX)
    assert n_prompt == 100
    prompt_text = tok.decode(out["input_ids"][:n_prompt])
    assert prompt_text.endswith(" TL;DR:") and prompt_text.startswith("word word")
    assert "END" not in prompt_text  # the source's end went, the cue stayed
    assert out["labels"][n_prompt:] == ids(tok, " The summary.") + [tok.eos_token_id]
    assert (stats.source_truncated, stats.target_truncated) == (1, 0)
    assert tokenize_prompt_for_generation(tok, ex, 100) == out["input_ids"][:n_prompt]


def test_long_target_is_cut_to_max_output_len_including_eos(tok):
    ex = summary_example("Doc.", "x" * 50)
    stats = TruncationStats()
    out = tokenize_example(tok, ex, 512, 10, stats)
    target = [t for t in out["labels"] if t != IGNORE_INDEX]
    assert target == ids(tok, " " + "x" * 50)[:9] + [tok.eos_token_id]
    assert stats.target_truncated == 1 and stats.source_truncated == 0
    exact = tokenize_example(tok, summary_example("Doc.", "x" * 8), 512, 10)  # 9 target tokens + EOS
    assert [t for t in exact["labels"] if t != IGNORE_INDEX] == ids(tok, " " + "x" * 8) + [tok.eos_token_id]


def test_prompt_without_cue_keeps_its_end_and_special_eos_in_prompt(tok):
    code = Example(prompt="# pad\n" * 50 + "def f(x):\n", target="    return x\n", references=["x"])
    out = tokenize_prompt_for_generation(tok, code, 40)
    assert len(out) == 40 and tok.decode(out).endswith("def f(x):\n")
    webq = Example(prompt="question: who? " * 30 + "</s> answer:", target=" me", references=["me"],
                   meta={"cue": "</s> answer:"})
    prompt = tokenize_prompt_for_generation(tok, webq, 30)
    assert len(prompt) == 30 and prompt[-len(ids(tok, " answer:")) - 1] == tok.eos_token_id
    with pytest.raises(ValueError, match="answer cue"):
        tokenize_prompt_for_generation(tok, webq, 5)


def test_bos_is_added_once_in_front_and_counts_toward_the_limit():
    from tokenizers import processors

    tok = byte_level_tokenizer()  # a fresh one: the post-processor is changed in place
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    assert special_prefix(tok) == [tok.bos_token_id]
    ex = summary_example("abc " * 40, "ok")
    out = tokenize_example(tok, ex, 50, 8)
    n_prompt = out["labels"].count(IGNORE_INDEX)
    assert n_prompt == 50 and out["input_ids"][0] == tok.bos_token_id
    assert out["input_ids"].count(tok.bos_token_id) == 1
    assert out["input_ids"][n_prompt:] == ids(tok, " ok") + [tok.eos_token_id]


def test_target_falls_back_to_separate_tokenization_when_merges_cross_the_boundary():
    from tokenizers import Tokenizer, models, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))  # no pre-tokenizer: merges may span spaces
    backend.train_from_iterator(["cat sat TL;DR: the mat"] * 50, trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], show_progress=False))
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")
    ex = summary_example("cat sat", "the mat")
    assert ids(tok, ex.prompt + ex.target)[:1] != ids(tok, ex.prompt)[:1] or \
        len(ids(tok, ex.prompt + ex.target)) == 1
    stats = TruncationStats()
    out = tokenize_example(tok, ex, 64, 64, stats)
    n_prompt = len(ids(tok, ex.prompt))
    assert out["labels"] == [IGNORE_INDEX] * n_prompt + ids(tok, ex.target) + [tok.eos_token_id]
    assert stats.separate_target_tokenization == 1


# --------------------------------------------------------------------------- collation

def test_collate_train_pads_right(tok):
    exs = [summary_example("a", "b"), summary_example("longer source", "longer target")]
    ds = TrainDataset(exs, tok, 64, 16)
    batch = collate_train(tok.pad_token_id)([ds[0], ds[1]])
    n0, n1 = len(ds[0]["input_ids"]), len(ds[1]["input_ids"])
    assert batch["input_ids"].shape == (2, n1) and batch["input_ids"].dtype == torch.long
    assert batch["input_ids"][0, :n0].tolist() == ds[0]["input_ids"]
    assert (batch["input_ids"][0, n0:] == tok.pad_token_id).all()
    assert (batch["labels"][0, n0:] == IGNORE_INDEX).all()
    assert batch["labels"][0, :n0].tolist() == ds[0]["labels"]
    assert batch["attention_mask"].tolist() == [[1] * n0 + [0] * (n1 - n0), [1] * n1]


def test_collate_generation_pads_left(tok):
    exs = [summary_example("a", "b"), summary_example("longer source", "c")]
    ds = PromptDataset(exs, tok, 64)
    batch = collate_generation(tok)([ds[0], ds[1]])
    p0, p1 = ds[0]["input_ids"], ds[1]["input_ids"]
    width = len(p1)
    assert batch["input_ids"][0].tolist() == [tok.pad_token_id] * (width - len(p0)) + p0
    assert batch["input_ids"][1].tolist() == p1
    assert batch["attention_mask"][0].tolist() == [0] * (width - len(p0)) + [1] * len(p0)
    assert batch["index"] == [0, 1]
    plain = collate_generation(tok)([p0, p1])
    assert torch.equal(plain["input_ids"], batch["input_ids"])


def test_collated_batch_trains_a_tiny_model(tok):
    from hizfo.models.loading import tiny_model

    model = tiny_model("opt")
    ds = TrainDataset([summary_example("some text", "sum"), summary_example("x", "y z")], tok, 32, 8)
    batch = collate_train(tok.pad_token_id)([ds[0], ds[1]])
    loss = model(**batch).loss
    assert torch.isfinite(loss)


# --------------------------------------------------------------------------- chat template

CHAT = ("{% for m in messages %}<s>user\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


def test_chat_example_wraps_the_prompt_and_keeps_the_assistant_header_as_the_cue():
    from hizfo.data.tokenize import chat_example

    tok = byte_level_tokenizer()
    tok.chat_template = CHAT
    ex = Example(prompt="question: what is x?</s> answer:", target=" the y", references=["the y"],
                 meta={"cue": "</s> answer:", "id": "q1"})
    chat = chat_example(tok, ex, "Answer with the entity only.")
    assert chat.prompt == "<s>user\nAnswer with the entity only.\n\nquestion: what is x?</s>\n<s>assistant\n"
    assert chat.meta["cue"] == "</s>\n<s>assistant\n" and chat.target == "the y" and chat.meta["id"] == "q1"
    # truncated, the question's end goes and the header stays; the labels are the answer and EOS only
    ids = tokenize_example(tok, chat, max_input_len=30, max_output_len=16)
    eos = tok.eos_token_id
    labels = [t for t in ids["labels"] if t != IGNORE_INDEX]
    assert labels == tok("the y", add_special_tokens=False)["input_ids"] + [eos]
    prompt = ids["input_ids"][:len(ids["input_ids"]) - len(labels)]
    assert tok.decode(prompt).endswith("<s>assistant\n") and len(prompt) == 30


def test_chat_instruction_on_a_tokenizer_without_a_template_is_a_clear_error():
    from hizfo.data.tokenize import chat_example

    ex = Example(prompt="q", target=" a", references=["a"])
    with pytest.raises(ValueError, match="no chat template.*chat_instruction null"):
        chat_example(byte_level_tokenizer(), ex)
