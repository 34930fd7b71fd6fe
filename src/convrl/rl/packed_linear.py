"""Linear layers whose weights are prepacked for oneDNN once, not on every call (CPU inference copies only).

A bf16 ``nn.Linear`` on a CPU runs oneDNN's matmul, which reorders the
weight into its blocked layout on every call. At decoding's batch sizes
(one new token for 8-96 rows) that reorder is most of the work: a
1536x576 projection took 244 us per call plain and 140 us from a weight
packed once (``torch.ops.mkldnn._reorder_linear_weight``, the packing
PyTorch's own inductor uses when it freezes a CPU model). Outputs equal the
plain call's at decoding sizes (1-69 rows, every projection of SmolLM2-135M)
and differ by bf16 rounding at some prefill sizes (oneDNN picks its kernel by
shape), so sampled rollouts are not bit-identical to unpacked ones. Matmuls
are ~60% of a decoding step of SmolLM2-135M (``bench/decode_levers.py``:
3.78 -> 3.34 s for 8 rows x 64 tokens, the same greedy tokens), so
rollouts, the simulated user, evaluation and self-play decode faster.

fp32 depends on the CPU. On an Intel Xeon (MKL's own hardware) packing gained
nothing at small batches (189 vs 165 us), so fp32 stays plain there. On an AMD
EPYC without bf16 units (Zen 3, AVX2), where a CPU has to decode in fp32, MKL's
small-batch GEMMs were the slow part of every step and oneDNN's packed ones
1.7-3.1x faster at 8-9 rows (the 49152x576 LM head 39.5 -> 12.8 ms, a
1536x576 projection 367 -> 215 us; ``bench/decode_levers.py --dtype fp32``
for whole steps), so fp32 models are packed on AMD CPUs. ``CONVRL_PACK_FP32=1``
or ``0`` overrides that choice.

A layer repacks itself when its weight changed in place (the tensor's
version counter): ``load_state_dict``, ``RolloutModel``'s per-step LoRA
refresh and ``tie_weights`` all keep working. Never used on a model that
trains: the packed op has no backward.

    pack_linears(model)            # in place; returns how many layers were packed (0 where unsupported)
"""

from __future__ import annotations

import functools
import os
import platform

import torch
from torch import nn

FP32_ENV = "CONVRL_PACK_FP32"


@functools.cache
def cpu_vendor() -> str:
    """The x86 vendor string (``GenuineIntel``, ``AuthenticAMD``), or "" where /proc/cpuinfo does not say."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def fp32_packing_pays() -> bool:
    """Whether fp32 linears are packed here: on x86 AMD CPUs (module docstring), or as ``$CONVRL_PACK_FP32`` says."""
    forced = os.environ.get(FP32_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return platform.machine().lower() in ("x86_64", "amd64") and cpu_vendor() == "AuthenticAMD"


def packing_supported(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """bf16 on a CPU whose oneDNN build has bf16 kernels; fp32 on a CPU where packing pays (``fp32_packing_pays``)."""
    if torch.device(device).type != "cpu" or dtype not in (torch.bfloat16, torch.float32):
        return False
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without these ops
        return False
    return fp32_packing_pays()


class PackedLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) computing from a oneDNN-packed copy of its weight."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            return super().forward(x)  # the packed op has no backward
        # Identity and in-place version: a new Parameter or any in-place write (copy_, load_state_dict) repacks.
        version = (id(self.weight), self.weight._version)
        if self.__dict__.get("_packed_version") != version:
            self.__dict__["_packed"] = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 8)
            self.__dict__["_packed_version"] = version
        return torch.ops.mkldnn._linear_pointwise(x, self.__dict__["_packed"], self.bias, "none", [], "")

    def __getstate__(self):
        # The packed copy is an opaque oneDNN tensor (no storage to copy or pickle): copies repack on first use.
        state = dict(super().__getstate__())
        state.pop("_packed", None)
        state.pop("_packed_version", None)
        return state


def pack_linears(model: nn.Module) -> int:
    """Turn every ``nn.Linear`` of an inference model into a ``PackedLinear`` in place where its dtype is packed on
    this device (``packing_supported``); the number packed."""
    first = next(model.parameters(), None)
    if first is None or not packing_supported(first.dtype, first.device):
        return 0
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == first.dtype:
            # Same object, same parameters: references held elsewhere (tied weights, get_submodule) stay valid.
            module.__class__ = PackedLinear
            n += 1
    return n
