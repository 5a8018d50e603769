"""Batched generation: left padding is exact, continuations only, modes and tokenizer restored."""

import pytest
import torch

from hizfo.evaluation.generation import GenerationSettings, cut_at_stop, generate
from hizfo.models.loading import byte_level_tokenizer, tiny_model

PROMPTS = ["Hello there, how", "A much longer prompt that needs padding on the left side", "x"]
GREEDY = GenerationSettings(max_new_tokens=10)
BEAM = GenerationSettings(max_new_tokens=10, num_beams=4, repetition_penalty=2.5, length_penalty=1.0,
                          early_stopping=True)


def varied_model(family: str):
    """A tiny model with larger random weights, so that different contexts give different text."""
    model = tiny_model(family)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:  # matrices only; norms keep their unit weights
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("family", ["llama", "opt"])
@pytest.mark.parametrize("settings", [GREEDY, BEAM], ids=["greedy", "beam4"])
def test_batched_equals_one_by_one(family, settings):
    model, tok = varied_model(family), byte_level_tokenizer()
    batched = generate(model, tok, PROMPTS, settings, batch_size=3, progress=False)
    single = [generate(model, tok, [p], settings, batch_size=1, progress=False)[0] for p in PROMPTS]
    assert batched == single
    assert len(set(batched)) == 3


def test_continuation_only_and_matches_plain_greedy():
    model, tok = varied_model("llama"), byte_level_tokenizer()
    out = generate(model, tok, [PROMPTS[0]], GREEDY, progress=False)[0]
    ids = torch.tensor([tok(PROMPTS[0])["input_ids"]])
    model.eval()
    with torch.no_grad():  # a hand-written greedy loop
        for _ in range(GREEDY.max_new_tokens):
            nxt = model(input_ids=ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    expected = tok.decode(ids[0, -GREEDY.max_new_tokens:], skip_special_tokens=True)
    assert out == expected


def test_modes_cache_flag_and_tokenizer_sides_restored():
    model, tok = varied_model("opt"), byte_level_tokenizer()
    model.train()
    frozen = model.model.decoder.layers[0]
    frozen.eval()  # a deliberately frozen submodule keeps its own mode
    tok.padding_side, tok.truncation_side = "right", "right"
    generate(model, tok, PROMPTS, GREEDY, batch_size=2, progress=False)
    assert model.training and not frozen.training and model.model.decoder.layers[1].training
    assert model.config.use_cache is False
    assert (tok.padding_side, tok.truncation_side) == ("right", "right")


def test_left_truncation_keeps_the_end_of_the_prompt():
    model, tok = varied_model("llama"), byte_level_tokenizer()
    long = "some ignored beginning " * 5 + "the end cue:"
    cut = generate(model, tok, [long], GREEDY, max_input_len=12, progress=False)[0]
    tail = tok.decode(tok(long)["input_ids"][-12:])
    assert cut == generate(model, tok, [tail], GREEDY, progress=False)[0]
    ids = tok(long)["input_ids"][-12:]  # pre-tokenized prompts are used as given
    assert cut == generate(model, tok, [ids], GREEDY, progress=False)[0]


def test_stop_strings_cut_the_continuation():
    assert cut_at_stop("abc\ndef x\n#c", ["\n#", "\ndef "]) == "abc"
    assert cut_at_stop("abc", ["zz", ""]) == "abc"
    model, tok = varied_model("llama"), byte_level_tokenizer()
    full = generate(model, tok, PROMPTS, GREEDY, progress=False)
    # stop at the first visible ASCII character after position 0 of each continuation
    stops = []
    for text in full:
        k = next(i for i in range(1, len(text)) if text[i].isascii() and text[i].isprintable()
                 and not text[i].isspace())
        stops.append(text[k])
    for prompt, text, stop in zip(PROMPTS, full, stops, strict=True):
        got = generate(model, tok, [prompt], GREEDY, stop=[stop], progress=False)[0]
        assert got == text[:text.index(stop)]
        got_beam = generate(model, tok, [prompt], BEAM, stop=[stop], progress=False)[0]
        assert stop not in got_beam


def test_peft_models_generate():
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model

    tok = byte_level_tokenizer()
    for cfg in (PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"])):
        model = get_peft_model(varied_model("llama"), cfg)
        batched = generate(model, tok, PROMPTS, GREEDY, batch_size=3, progress=False)
        single = [generate(model, tok, [p], GREEDY, batch_size=1, progress=False)[0] for p in PROMPTS]
        assert batched == single, type(cfg).__name__


def test_settings_from_task_cfg():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"do_sample": False, "num_beams": 4, "repetition_penalty": 2.5,
                            "length_penalty": 1.0, "early_stopping": True, "max_new_tokens": 64})
    s = GenerationSettings.from_cfg(cfg)
    assert s == GenerationSettings(max_new_tokens=64, num_beams=4, repetition_penalty=2.5,
                                   early_stopping=True)
    assert "early_stopping" not in GenerationSettings(num_beams=1).generate_kwargs()
