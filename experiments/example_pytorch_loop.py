"""Hi-ZFO in your own PyTorch loop: your model, data and loop; hizfo runs the optimizer step.

    python experiments/example_pytorch_loop.py      # HIZFO_MODEL=tiny HIZFO_EXAMPLE_STEPS=4: seconds

attach(loss_fn=...) takes your objective, attach(schedule=...) your LR schedule. Model: $HIZFO_MODEL (a
folder, or "tiny": a tiny random Llama), else the SmolLM2 folder that `make model` builds.
"""
import itertools
import os
import sys

import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

import hizfo
from hizfo.data import Example, TrainDataset, collate_train
from hizfo.models.loading import load_model_and_tokenizer, resolve_device
from hizfo.runs.resources import project_path

steps = int(os.environ.get("HIZFO_EXAMPLE_STEPS", "20"))
path = os.environ.get("HIZFO_MODEL") or str(project_path("artifacts/models/smollm2-135m-instruct"))
if path != "tiny" and not os.path.isdir(path):
    print(f"no model folder {path} (run `make model`): a tiny random model instead", file=sys.stderr)
spec = {"source": "local", "path": path} if os.path.isdir(path) else {"source": "tiny", "family": "llama"}
model, tok = load_model_and_tokenizer(OmegaConf.create(spec), resolve_device("auto"))  # cuda if any
pairs = [("What is 7 times 6?", "42."), ("Name a primary colour.", "Red."), ("What do bees make?", "Honey.")]
data = TrainDataset([Example(f"Question: {p}\nAnswer:", f" {r}", [r]) for p, r in pairs * 4], tok, 64, 16)
loader = DataLoader(data, batch_size=4, shuffle=True, collate_fn=collate_train(tok.pad_token_id))
method = hizfo.make_method("hizfo", rho=0.6, lr=1e-4).attach(  # conf/method/hizfo.yaml + overrides
    model, total_steps=steps, profile_batch=next(iter(loader)), steps_per_epoch=len(loader))
print(f"Theta_FO {method.partition.fo_params} / Theta_ZO {method.partition.zo_params} parameters")
for step, batch in zip(range(steps), itertools.chain.from_iterable(itertools.repeat(loader))):
    metrics = method.step(batch)  # one optimizer step: AdamW on Theta_FO, a ZO update on Theta_ZO
    print(f"step {step + 1}: loss {metrics['loss']:.4f}, projected grad {metrics['projected_grad']:+.3g}")
os.makedirs("outputs", exist_ok=True)  # weights + method state: a point to resume from exactly
torch.save({"model": model.state_dict(), "method": method.state_dict()}, "outputs/example_loop.pt")
