"""SmolLM2 fine-tuned on your own prompt/response pairs by a transformers Trainer script with Hi-ZFO.

    python experiments/example_trainer.py      # HIZFO_MODEL=tiny HIZFO_EXAMPLE_STEPS=4: seconds

ZOFOTrainer's optimizer step is Hi-ZFO's; TrainingArguments keep their meaning (hizfo.hf_trainer lists
the few it refuses). Model: $HIZFO_MODEL (a folder, or "tiny": a tiny random Llama), else the SmolLM2
folder that `make model` builds. Checkpoints and logs go to outputs/example_trainer.
"""
import os
import sys

from omegaconf import OmegaConf
from transformers import TrainingArguments

from hizfo import ZOFOTrainer
from hizfo.data import Example, TrainDataset, collate_train
from hizfo.models.loading import load_model_and_tokenizer
from hizfo.runs.resources import project_path

PAIRS = [("What is the capital of France?", "Paris."), ("What is 7 times 6?", "42."),
         ("Translate 'thank you' into Spanish.", "Gracias."), ("Name a primary colour.", "Red."),
         ("What do bees make?", "Honey."), ("How many days are in a week?", "Seven.")]
steps = int(os.environ.get("HIZFO_EXAMPLE_STEPS", "20"))
path = os.environ.get("HIZFO_MODEL") or str(project_path("artifacts/models/smollm2-135m-instruct"))
if path != "tiny" and not os.path.isdir(path):
    print(f"no model folder {path} (run `make model`): a tiny random model instead", file=sys.stderr)
spec = {"source": "local", "path": path} if os.path.isdir(path) else {"source": "tiny", "family": "llama"}
model, tok = load_model_and_tokenizer(OmegaConf.create(spec))
data = TrainDataset([Example(f"Question: {p}\nAnswer:", f" {r}", [r]) for p, r in PAIRS], tok, 64, 16)
args = TrainingArguments(output_dir="outputs/example_trainer", max_steps=steps, per_device_train_batch_size=2,
                         gradient_accumulation_steps=2, learning_rate=1e-4, max_grad_norm=0.0,
                         logging_steps=5, save_steps=10, eval_strategy="steps", eval_steps=10, report_to=[])
trainer = ZOFOTrainer(model=model, args=args, train_dataset=data, eval_dataset=data, method="hizfo",
                      data_collator=collate_train(tok.pad_token_id), method_options={"rho": 0.6})
trainer.train()  # trainer.train(resume_from_checkpoint=True) continues an interrupted run exactly
part = trainer.zofo.partition
print(f"eval_loss {trainer.evaluate()['eval_loss']:.4f}; {part.fo_params} FO, {part.zo_params} ZO parameters")
