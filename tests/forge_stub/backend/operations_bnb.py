"""Forge's backend/operations_bnb.py without bitsandbytes: a 4-bit weight is a Parameter whose data are packed
uint8 [n/2, 1] (two 4-bit codes a byte), with a ``quant_state`` holding the logical ``shape``, the ``dtype`` it
dequantises into, the ``quant_type`` and one absmax per block of 64 values; ``bnb_quantized`` as bnb's Params4bit.

NF4 (QLoRA): 16 code values (the public table below), value = absmax(block) · table[code]. Written for these tests;
the packing order (first value in the high nibble) is this stand-in's own.
"""

from dataclasses import dataclass

import torch

NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
])  # fmt: skip
BLOCK = 64


@dataclass
class QuantState:
    shape: torch.Size
    dtype: torch.dtype
    absmax: torch.Tensor
    quant_type: str = "nf4"
    blocksize: int = BLOCK


class Params4bit(torch.nn.Parameter):
    def __new__(cls, data=None, requires_grad=False, **_):
        return super().__new__(cls, data, requires_grad=False)

    def __init__(self, data=None, requires_grad=False, *, quant_state=None):
        self.quant_state = quant_state
        self.bnb_quantized = quant_state is not None

    @classmethod
    def quantized(cls, weight: torch.Tensor, dtype: torch.dtype = torch.float16) -> "Params4bit":
        blocks = weight.float().reshape(-1, BLOCK)
        absmax = blocks.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        codes = (blocks / absmax).unsqueeze(-1).sub(NF4).abs().argmin(dim=-1).to(torch.uint8).reshape(-1, 2)
        packed = (codes[:, 0] << 4 | codes[:, 1]).reshape(-1, 1)
        return cls(packed, quant_state=QuantState(torch.Size(weight.shape), dtype, absmax.reshape(-1)))

    def to(self, *args, **kwargs):
        return Params4bit(self.data.to(*args, **kwargs), quant_state=self.quant_state)


def functional_dequantize_4bit(weight: Params4bit) -> torch.Tensor:
    state = weight.quant_state
    codes = torch.stack([weight.data.reshape(-1) >> 4, weight.data.reshape(-1) & 15], dim=1).reshape(-1, state.blocksize)
    values = NF4.to(weight.device)[codes.long()] * state.absmax.to(weight.device).view(-1, 1)
    return values.reshape(state.shape).to(state.dtype)


class ForgeLoader4Bit(torch.nn.Module):
    """Forge's bnb Linear base: holds a Params4bit and a bias (its forward: ``operations.ForgeOperationsBNB4bits``)."""

    def __init__(self):
        super().__init__()
        self.weight = None
        self.bias = None
