"""hizfo.api: a method driven from plain PyTorch equals the runner's training bit for bit, resumes
exactly, takes a custom loss and a schedule hook, and refuses bad options with the schema's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import DATA, HAS_DATA, make_batch
from hydra import compose, initialize_config_dir
from torch import nn

import hizfo
from hizfo.data import TrainDataset, collate_train
from hizfo.models.loading import tiny_model
from hizfo.runs.config_schema import ConfigError
from hizfo.train import load_train_examples, run
from hizfo.training import checkpoints
from hizfo.training.loop import LoopConfig, epoch_loader, seed_everything, split_micro_batches
from hizfo.training.losses import causal_lm_loss

CONF = str(Path(__file__).resolve().parents[1] / "conf")
EPOCHS, SEED = 3, 0  # 3 epochs: GreenTrainer re-selects at epoch 2 (every 2 epochs)


def runner_cfg(tmp_path, method: str, grad_accum: int = 1):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "model=tiny-llama", "task=dialogsum", "task.max_train_examples=8", "task.max_input_len=48",
            "task.max_output_len=16", f"method={method}", f"trainer.num_epochs={EPOCHS}",
            f"trainer.grad_accum={grad_accum}",
            "trainer.eval_every_epoch=false", "trainer.eval_every_steps=null", "trainer.select=last",
            "eval.split=null", "eval.final_split=null", "logger.wandb=false", f"seed={SEED}",
            f"paths.results_dir={tmp_path}/runs", f"paths.checkpoint_dir={tmp_path}/ckpt"])


def runner_batches(cfg) -> list[dict[str, torch.Tensor]]:
    """The batches the runner's loop steps through, in its order (data order is (seed, epoch))."""
    from hizfo.models.loading import byte_level_tokenizer

    tok = byte_level_tokenizer()
    examples = load_train_examples(cfg.task, DATA, tok.eos_token)
    data = TrainDataset(examples, tok, int(cfg.task.max_input_len), int(cfg.task.max_output_len))
    loop = LoopConfig(num_epochs=EPOCHS, batch_size=int(cfg.trainer.batch_size), seed=SEED)
    return [b for e in range(EPOCHS) for b in epoch_loader(data, loop, e, collate_train(tok.pad_token_id))]


@pytest.mark.skipif(not HAS_DATA, reason="release files not found (set HIZFO_DATA_DIR)")
@pytest.mark.parametrize("name, accum", [("hizfo", 1), ("mezo", 1), ("greentrainer", 1), ("hizfo", 2)])
def test_api_steps_equal_the_runners_bit_for_bit(tmp_path, name, accum):
    """accum 2: the runner splits each batch in two micro-batches; the API gets the same list."""
    cfg = runner_cfg(tmp_path, name, accum)
    record = run(cfg)
    assert record["status"] == "completed" and record["time"]["steps"] == 6
    saved = checkpoints.load(tmp_path / "ckpt" / record["config_fingerprint"]).state["model"]

    batches = runner_batches(cfg)
    model = tiny_model("llama", seed=int(cfg.model.get("init_seed", 0)))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seed_everything(SEED)  # the loop seeds torch's RNG (dropout) before the method's setup
    method = hizfo.make_method(name).attach(model, total_steps=len(batches), profile_batch=batches[0],
                                            steps_per_epoch=len(batches) // EPOCHS, seed=SEED)
    losses = [method.step(split_micro_batches(b, accum, torch.device("cpu")))["loss"] for b in batches]

    assert [h["loss"] for h in record["history"]] == losses
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, start[k])]
    assert changed, "training changed no weight: the comparison would be vacuous"
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    if name == "greentrainer":  # the epoch-2 re-selection ran here as in the runner
        assert len(method.describe()["reselections"]) == 2


def two_batches():
    return [make_batch(seed=s, bsz=2, seq=12) for s in (1, 2, 3, 4)]


@pytest.mark.parametrize("name", ["hizfo", "mezo"])
def test_state_dict_resumes_exactly(name):
    """4 steps straight = 2 steps, save, fresh model + method, load, 2 steps (dropout replays too)."""
    batches = two_batches()
    opts = {"fo_tensors": ["model.norm.weight", "lm_head.weight"]} if name == "hizfo" else {}

    def fresh():
        torch.manual_seed(0)
        model = tiny_model("llama", seed=3)
        torch.manual_seed(11)
        return model, hizfo.make_method(name, lr=1e-3, **opts).attach(
            model, total_steps=4, profile_batch=batches[0], seed=5)

    model, method = fresh()
    for b in batches:
        method.step(b)
    straight = {k: v.clone() for k, v in model.state_dict().items()}

    model, method = fresh()
    for b in batches[:2]:
        method.step(b)
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "method": method.state_dict()}
    torch.manual_seed(999)  # a resumed process starts with another RNG state: loading must restore it
    model, method = fresh()
    model.load_state_dict(saved["model"])
    method.load_state_dict(saved["method"])
    for b in batches[2:]:
        method.step(b)
    assert all(torch.equal(v, straight[k]) for k, v in model.state_dict().items())
    assert method.steps_done == 4


def test_partition_names_theta_fo_and_theta_zo():
    model = tiny_model("llama", seed=0)
    fo = ["model.norm.weight", "model.layers.1.mlp.down_proj.weight"]
    method = hizfo.make_method("hizfo", fo_tensors=fo).attach(model, total_steps=2,
                                                              profile_batch=make_batch())
    part = method.partition
    assert sorted(part.fo) == sorted(fo)
    params = dict(model.named_parameters())
    assert set(part.zo) == set(params) - set(fo) and part.fo_params + part.zo_params == sum(
        p.numel() for p in params.values())
    mezo = hizfo.make_method("mezo").attach(tiny_model("llama", seed=0), total_steps=1,
                                            profile_batch=make_batch())
    assert mezo.partition.fo == {} and len(mezo.partition.zo) == len(params)


def test_custom_loss_reaches_every_forward_of_a_zo_step():
    """The objective is a closure: MeZO evaluates it at theta + eps*z and theta - eps*z."""
    model = tiny_model("llama", seed=0)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        return 2.0 * causal_lm_loss(m, batch)

    method = hizfo.make_method("mezo").attach(model, total_steps=1, profile_batch=make_batch(),
                                              loss_fn=loss_fn)
    metrics = method.step(make_batch())
    assert len(calls) == 2
    torch.manual_seed(0)
    with torch.no_grad():
        plain = float(causal_lm_loss(model.eval(), make_batch()))
    assert metrics["loss_plus"] == pytest.approx(2.0 * plain, rel=1e-2)  # eps 1e-3: near the clean loss
    with torch.no_grad():
        assert float(causal_lm_loss(model, make_batch())) == pytest.approx(plain)  # the default again


@pytest.mark.parametrize("name", ["hizfo", "mezo", "greentrainer", "full_ft"])
def test_schedule_hook_sets_the_rate(name):
    model = tiny_model("llama", seed=0)
    opts = {"fo_tensors": ["lm_head.weight"]} if name == "hizfo" else {}
    method = hizfo.make_method(name, lr=1e-3, **opts).attach(
        model, total_steps=10, profile_batch=make_batch(), schedule=lambda t: 0.5 * (t + 1))
    used = []
    for t in range(3):
        before = method.method.optimizer.param_groups[0]["lr"] if name == "full_ft" else None
        lr = method.step(make_batch(seed=t))["lr"]
        used.append(before if name == "full_ft" else lr)  # full_ft logs the rate of the next step
    assert used == pytest.approx([5e-4, 1e-3, 1.5e-3])


def test_bad_options_fail_with_the_runners_schema_errors():
    with pytest.raises(ConfigError, match="rho"):
        hizfo.make_method("hizfo", rho=1.5)
    with pytest.raises(ConfigError, match="unknown key|not a key|rhoo"):
        hizfo.make_method("hizfo", rhoo=0.5)
    with pytest.raises(ValueError, match="unknown method"):
        hizfo.make_method("adamw2")
    with pytest.raises(RuntimeError, match="attach"):
        hizfo.make_method("mezo").step(make_batch())


class PlainLM(nn.Module):
    """A causal LM that is not a transformers model: returns the logits tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.body, self.head = nn.Embedding(260, 16), nn.Linear(16, 16), nn.Linear(16, 260)

    def forward(self, input_ids, attention_mask=None):
        return self.head(torch.tanh(self.body(self.embed(input_ids))))


def test_a_plain_module_trains_with_hizfo_given_its_theta_fo():
    model = PlainLM()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="fo_tensors="):
        hizfo.make_method("hizfo").attach(model, total_steps=2, profile_batch=make_batch())
    method = hizfo.make_method("hizfo", fo_tensors=["head.weight", "head.bias"], lr=1e-2).attach(
        PlainLM(), total_steps=2, profile_batch=make_batch())
    model = method.model
    model.load_state_dict(start)
    for seed in (1, 2):
        method.step(make_batch(seed=seed))
    assert set(method.partition.fo) == {"head.weight", "head.bias"}
    assert all(not torch.equal(v, start[k]) for k, v in model.state_dict().items())  # FO and ZO moved


@pytest.mark.parametrize("name", ["full_ft", "ft_topk", "lora", "prefix", "greentrainer", "mezo", "hizfo",
                                  "bilevel_zofo"])
def test_every_training_method_steps_through_the_api(name):
    model = tiny_model("llama", seed=0)
    extra = {"dev_batches": lambda j: [make_batch(seed=100 + j)]} if name == "bilevel_zofo" else None
    opts = {"outer_every": 1, "lr": 1e-3} if name == "bilevel_zofo" else {}
    method = hizfo.make_method(name, **opts).attach(model, total_steps=2, profile_batch=make_batch(),
                                                    extra=extra)
    before = [p.detach().clone() for p in method.trainable_parameters()]
    metrics = method.step(make_batch(seed=1))
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(not torch.equal(p, b) for p, b in zip(method.trainable_parameters(), before))
    part = method.partition
    assert part.fo_params + part.zo_params == sum(p.numel() for p in method.trainable_parameters()) > 0
