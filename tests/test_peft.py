"""LoRA and prefix tuning: targets, errors, exact steps, merge, save/reload, resume."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from hizfo.methods import TrainSetup, build_method
from hizfo.models import peft_utils
from hizfo.models.loading import TINY_FAMILIES, byte_level_tokenizer, tiny_model
from hizfo.runs.config_schema import method_config
from hizfo.training.losses import causal_lm_loss

EXPECTED_TARGETS = {"opt": ["q_proj", "v_proj"], "bloom": ["query_key_value"],
                    "qwen2": ["q_proj", "v_proj"], "llama": ["q_proj", "v_proj"]}


def make_batch(n: int = 4, length: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tokens; labels -100 on a 4-token prompt and on right padding of the last row."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (n, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[-1, -3:] = 0
    ids[-1, -3:] = 256
    labels = ids.clone()
    labels[:, :4] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def make_method(name: str, model, total_steps: int = 10, **overrides):
    cfg = OmegaConf.load(f"conf/method/{name}.yaml")
    for k, v in overrides.items():
        cfg[k] = v
    method = build_method(name, cfg)
    method.setup(model, TrainSetup(total_steps=total_steps, steps_per_epoch=total_steps, num_epochs=1,
                                   device=torch.device("cpu"), seed=0, profile_batch=make_batch()))
    return method


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# --------------------------------------------------------------------------- targets and errors

@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lora_targets_per_family(family):
    model = tiny_model(family)
    assert peft_utils.resolve_lora_targets(model) == EXPECTED_TARGETS[family]
    pm = peft_utils.wrap_lora(model)
    wrapped = {n.split(".")[-4] for n, _ in peft_utils.adapter_parameters(pm)}
    assert wrapped == set(EXPECTED_TARGETS[family])
    n_layers = 2
    assert len(peft_utils.adapter_parameters(pm)) == 2 * n_layers * len(EXPECTED_TARGETS[family])


def test_explicit_targets_from_the_config():
    method = make_method("lora", tiny_model("llama"), target_modules=["q_proj", "k_proj"])
    assert method.describe()["target_modules"] == ["k_proj", "q_proj"]


def test_unknown_target_module_is_a_clear_error():
    model = tiny_model("opt")
    with pytest.raises(ValueError, match=r"do not exist.*Available Linear module names:.*q_proj"):
        peft_utils.wrap_lora(model, target_modules=["query"])
    with pytest.raises(ValueError, match="do not exist"):
        make_method("lora", tiny_model("llama"), target_modules=["query_key_value"])


def test_unknown_architecture_is_a_clear_error():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=260, n_embd=32, n_layer=1, n_head=4))
    with pytest.raises(ValueError, match=r"model type 'gpt2'.*target_modules explicitly.*c_attn"):
        peft_utils.wrap_lora(model)
    peft_utils.wrap_lora(model, target_modules=["c_attn"])  # explicit targets work (Conv1D)


def test_bad_peft_settings():
    with pytest.raises(ValueError, match="rank"):
        peft_utils.wrap_lora(tiny_model("opt"), r=0)
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        peft_utils.wrap_prefix(tiny_model("opt"), num_virtual_tokens=0)
    with pytest.raises(ValueError, match="unknown PEFT kind"):
        peft_utils.build_peft(tiny_model("opt"), "ia3")


def test_wrapping_twice_is_refused():
    model = tiny_model("opt")
    peft_utils.wrap_lora(model)
    with pytest.raises(ValueError, match="already carries PEFT adapters"):
        peft_utils.wrap_prefix(model)


# --------------------------------------------------------------------------- steps

@pytest.mark.parametrize("name", ["lora", "prefix"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_only_adapter_parameters_change(name, family):
    model = tiny_model(family)
    method = make_method(name, model)
    adapters = {n for n, _ in peft_utils.adapter_parameters(method.peft_model)}
    before = snapshot(method.peft_model)
    out = method.step(model, [make_batch(seed=1)], 0)
    assert out["loss"] > 0
    after = snapshot(method.peft_model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= adapters
    # AdamW's first step moves every element by at most lr (|m_hat / sqrt(v_hat)| <= 1) plus the
    # decoupled weight decay lr * 0.01 * |w|, up to the fp32 rounding of the stored weight.
    for n in changed:
        bound = (2e-5 * (1 + 1e-4) + 2e-5 * 0.01 * before[n].abs()
                 + 2 * torch.finfo(torch.float32).eps * before[n].abs())
        assert ((after[n] - before[n]).abs() <= bound).all()
    assert {id(p) for p in method.trainable_parameters(model)} == {
        id(p) for _, p in peft_utils.adapter_parameters(method.peft_model)}


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_step_uses_the_mean_gradient_over_micro_batches(name):
    """Llama (no dropout) with LoRA dropout 0: the optimizer sees d/dA of the micro-batch mean."""
    model = tiny_model("llama")
    method = make_method(name, model, **({"dropout": 0.0} if name == "lora" else {}))
    mbs = [make_batch(n=2, seed=3), make_batch(n=3, length=9, seed=4)]
    named = method.named
    loss = sum(causal_lm_loss(method.peft_model, b) for b in mbs) / len(mbs)
    ref = torch.autograd.grad(loss, [p for _, p in named])
    before = [p.detach().clone() for _, p in named]
    seen = {}

    def capture(*_):
        seen["grads"] = [p.grad.clone() for _, p in named]

    method.optimizer.register_step_pre_hook(capture)
    out = method.step(model, mbs, 0)
    assert out["loss"] == pytest.approx(loss.item(), rel=1e-6)
    for g, r in zip(seen["grads"], ref):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)
    # ... and takes exactly torch's default AdamW step with it (weight decay 0.01 on every tensor,
    # as the GreenTrainer reference).
    clones = [b.clone().requires_grad_(True) for b in before]
    opt = torch.optim.AdamW(clones, lr=2e-5)
    for c, r in zip(clones, ref):
        c.grad = r.clone()
    opt.step()
    for (_, p), c in zip(named, clones):
        torch.testing.assert_close(p.detach(), c.detach(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_lora_merged_matches_unmerged(family):
    model = tiny_model(family)
    method = make_method("lora", model, lr=1e-2)
    for s in range(2):
        method.step(model, [make_batch(seed=s)], s)
    pm = method.eval_model(model).eval()
    lora_b = [p for n, p in peft_utils.adapter_parameters(pm) if "lora_B" in n]
    assert all(p.abs().max() > 0 for p in lora_b)  # B != 0: the adapter does something
    batch = make_batch(seed=9)
    with torch.no_grad():
        unmerged = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        pm.merge_adapter()
        merged = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        pm.unmerge_adapter()
        again = pm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, unmerged, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["lora", "prefix"])
@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_saved_adapter_reloads_and_generates_the_same(name, family, tmp_path):
    model = tiny_model(family)
    method = make_method(name, model, lr=5e-2)
    for s in range(3):
        method.step(model, [make_batch(seed=s)], s)
    path = method.save_artifacts(tmp_path)
    assert (path / "adapter_config.json").exists() and (path / "adapter_model.safetensors").exists()

    tok = byte_level_tokenizer()
    enc = tok(["question: 2+2", "hello"], return_tensors="pt", padding=True, padding_side="left")
    gen_kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=256)
    trained = method.eval_model(model).eval()
    with torch.no_grad():
        out = trained.generate(**enc, **gen_kw)
        reloaded = peft_utils.load_adapter(tiny_model(family), path).eval()
        again = reloaded.generate(**enc, **gen_kw)
        base_logits = tiny_model(family)(**enc).logits
        adapted_logits = reloaded(**enc).logits
    assert torch.equal(out, again)
    assert not torch.allclose(base_logits, adapted_logits, atol=1e-4)  # the adapter matters


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_resume_from_state_dict_continues_identically(name):
    batches = [[make_batch(seed=s)] for s in range(3)]
    model_a = tiny_model("qwen2")
    a = make_method(name, model_a, lr=1e-2)
    for s in range(2):
        a.step(model_a, batches[s], s)
    model_state = {k: v.clone() for k, v in model_a.state_dict().items()}
    method_state = copy.deepcopy(a.state_dict())  # as if through torch.save (no aliasing)

    torch.manual_seed(123)  # a different global RNG at setup: LoRA's init must not matter
    model_b = tiny_model("qwen2")
    b = make_method(name, model_b, lr=1e-2)
    model_b.load_state_dict(model_state)
    b.load_state_dict(method_state)
    torch.manual_seed(5)
    a.step(model_a, batches[2], 2)
    torch.manual_seed(5)
    b.step(model_b, batches[2], 2)
    pa, pb = snapshot(a.peft_model), snapshot(b.peft_model)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def test_step_with_a_foreign_model_is_refused():
    model = tiny_model("opt")
    method = make_method("lora", model)
    with pytest.raises(ValueError, match="different model"):
        method.step(tiny_model("opt"), [make_batch()], 0)


# --------------------------------------------------------------------------- through the training loop

class Interrupt(Exception):
    pass


def loop_run(name, ckpt=None, crash_at=None, n_examples=12, **overrides):
    """Two epochs of the real loop on a toy task (checkpoint every step); returns (method, result)."""
    from hizfo.data.base import Example
    from hizfo.data.collate import TrainDataset, collate_train
    from hizfo.training.loop import LoopConfig, train

    tok = byte_level_tokenizer()
    examples = [Example(prompt=f"count {i} TL;DR:", target=f" number {i % 3}", references=[str(i)])
                for i in range(n_examples)]
    ds = TrainDataset(examples, tok, max_input_len=32, max_output_len=16)
    cfg = OmegaConf.load(f"conf/method/{name}.yaml")
    cfg.update(overrides)
    model, method = tiny_model("opt"), build_method(name, cfg)
    loop_cfg = LoopConfig(num_epochs=2, batch_size=4, seed=0, checkpoint_dir=str(ckpt) if ckpt else None,
                          checkpoint_every_steps=1)

    def on_step(step, metrics):
        if step == crash_at:
            raise Interrupt(f"simulated crash at step {step}")

    result = train(model, method, ds, collate_train(tok.pad_token_id), loop_cfg, torch.device("cpu"),
                   on_step=on_step)
    return method, result


def assert_resume_matches(name, tmp_path, stop_at, **overrides):
    full_method, full = loop_run(name, **overrides)
    with pytest.raises(Interrupt):
        loop_run(name, tmp_path, crash_at=stop_at + 1, **overrides)
    method, resumed = loop_run(name, tmp_path, **overrides)
    assert resumed.resumed_from_step == stop_at
    assert resumed.history == full.history
    a, b = dict(full_method.peft_model.named_parameters()), dict(method.peft_model.named_parameters())
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("name", ["lora", "prefix"])
def test_loop_resume_matches_uninterrupted(name, tmp_path):
    """The prefix lives outside the base model's state_dict: the method state must carry it."""
    assert_resume_matches(name, tmp_path, stop_at=4, lr=1e-2)


@pytest.mark.parametrize("family", ["opt", "bloom", "qwen2", "llama"])
def test_prefix_init_from_tokens_equals_prepending_those_tokens(family):
    """With the prefix set from the key/values of tokens t[:n], the prefixed model on t[n:] gives
    exactly the base model's logits on t at positions n: (the prefix *is* that context)."""
    tok = byte_level_tokenizer()
    model = tiny_model(family, seed=0)
    model.eval()
    ids = torch.tensor([tok("The quick brown fox jumps over the lazy dog.").input_ids[:20]])
    with torch.no_grad():
        full = model(input_ids=ids).logits[0, 5:]
    peft_model = peft_utils.wrap_prefix(model, num_virtual_tokens=5)
    peft_model.eval()
    rest = ids[:, 5:]
    with torch.no_grad():
        random_init = peft_model(input_ids=rest, attention_mask=torch.ones_like(rest)).logits[0]
    peft_utils.init_prefix_from_tokens(peft_model, ids[0])
    with torch.no_grad():
        got = peft_model(input_ids=rest, attention_mask=torch.ones_like(rest)).logits[0]
    assert torch.allclose(got, full, atol=1e-5)
    assert not torch.allclose(random_init, full, atol=1e-3)


def test_prefix_method_init_option():
    model = tiny_model("llama", seed=0)
    ids = torch.arange(1, 31).view(1, 30)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["labels"] = batch["input_ids"].clone()
    setup = TrainSetup(total_steps=2, steps_per_epoch=2, num_epochs=1, device=torch.device("cpu"), seed=0,
                       profile_batch=batch)
    with pytest.raises(ValueError, match="method.init: expected one of 'random', 'tokens', got 'zeros'"):
        build_method("prefix", method_config("prefix", init="zeros")).setup(model, setup)
    method = build_method("prefix", method_config("prefix", num_virtual_tokens=4, init="tokens"))
    method.setup(tiny_model("llama", seed=0), setup)
    # the first 4 prompt tokens became the prefix: the wrapped model now continues from them
    rest = batch["input_ids"][:, 4:]
    with torch.no_grad():
        expected = tiny_model("llama", seed=0)(input_ids=batch["input_ids"]).logits[0, 4:]
        got = method.peft_model(input_ids=rest, attention_mask=torch.ones_like(rest)).logits[0]
    assert torch.allclose(got, expected, atol=1e-5)
    assert method.step(method.base_model, [batch], 0)["loss"] > 0
