"""Core runtime facts shared by every layer: which precision is fast here.

Lives below data/rewards/rl so that reward encoders, the fluency scorer and the RL
trainer all ask one place; nothing here imports the rest of convrl::

    from convrl.runtime import bf16_supported, resolve_precision
    resolve_precision("auto")   # "bf16" on a CPU with AVX512-BF16/AMX or a CUDA GPU, else "fp32"
"""

from __future__ import annotations


def bf16_supported() -> bool:
    """bf16 matmuls are fast here: a CUDA device, or a CPU with AVX512-BF16/AMX (oneDNN)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - older builds lack the probe
        return False


def resolve_precision(precision: str) -> str:
    """'auto' -> 'bf16' where bf16 is fast, else 'fp32'; 'bf16'/'fp32' pass through."""
    if precision == "auto":
        return "bf16" if bf16_supported() else "fp32"
    if precision not in ("bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return precision


def offline_defaults() -> None:
    """Never reach the HF hub at run time unless asked: a cluster sets HF_HUB_OFFLINE=0 explicitly to allow it.

    Also quiets telemetry and progress bars that would otherwise flood the pipeline logs.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", os.environ["HF_HUB_OFFLINE"])
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
