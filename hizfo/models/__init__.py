"""Causal LMs and their adapters: ``loading`` (hub id, local folder, GGUF or a tiny random config;
device and dtype), ``peft_utils`` (LoRA and prefix tuning through peft) and ``prepare`` (builds the
embedded SmolLM2-135M-Instruct that `make model` writes to artifacts/models).

May import ``hizfo.runs`` and ``hizfo.training`` (precision); never methods, evaluation or the runner.
"""
