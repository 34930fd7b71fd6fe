"""bf16 linear layers whose weights are prepacked for oneDNN once, not on every call (CPU inference copies only).

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
rollouts, the simulated user, evaluation and self-play decode faster. fp32
gains nothing at small batches (189 vs 165 us), so only bf16 models are
packed.

A layer repacks itself when its weight changed in place (the tensor's
version counter): ``load_state_dict``, ``RolloutModel``'s per-step LoRA
refresh and ``tie_weights`` all keep working. Never used on a model that
trains: the packed op has no backward.

    pack_linears(model)            # in place; returns how many layers were packed (0 where unsupported)
"""

from __future__ import annotations

import torch
from torch import nn


def packing_supported(dtype: torch.dtype, device: torch.device | str = "cpu") -> bool:
    """bf16 on a CPU whose oneDNN build has bf16 kernels."""
    if torch.device(device).type != "cpu" or dtype != torch.bfloat16:
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without these ops
        return False


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
    """Turn every bf16 ``nn.Linear`` of an inference model into a ``PackedLinear`` in place; the number packed."""
    first = next(model.parameters(), None)
    if first is None or not packing_supported(first.dtype, first.device):
        return 0
    n = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.bfloat16:
            # Same object, same parameters: references held elsewhere (tied weights, get_submodule) stay valid.
            module.__class__ = PackedLinear
            n += 1
    return n
