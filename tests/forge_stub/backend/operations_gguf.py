"""Forge's backend/operations_gguf.py: a GGUF tensor is a Parameter whose data are the file's bytes (uint8, one row
of blocks per output row), whose ``shape`` is the logical shape (``real_shape``), with the block format in
``gguf_cls`` and the dtype it dequantises into in ``computation_dtype``; ``.to()`` keeps all of that.

Q8_0 as the GGUF spec (ggml) defines it, written for these tests: blocks of 32 values along a row, each stored as an
fp16 scale d followed by 32 int8 q (34 bytes); value = d·q, d = max|x|/127, q = round(x/d).
"""

import torch

Q8_0_BLOCK, Q8_0_BYTES = 32, 34


class Q8_0:
    @staticmethod
    def quantize(x: torch.Tensor) -> torch.Tensor:
        """[rows, cols] float → [rows, cols/32·34] uint8 blocks."""
        rows, cols = x.shape
        blocks = x.float().reshape(rows * cols // Q8_0_BLOCK, Q8_0_BLOCK)
        d = blocks.abs().amax(dim=1, keepdim=True) / 127
        inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
        q = torch.round(blocks * inv).clamp(-128, 127).to(torch.int8)
        raw = torch.cat([d.to(torch.float16).view(torch.uint8), q.view(torch.uint8)], dim=1)
        return raw.reshape(rows, cols // Q8_0_BLOCK * Q8_0_BYTES).contiguous()

    @staticmethod
    def dequantize_pytorch(p: "ParameterGGUF") -> torch.Tensor:
        raw = p.data.reshape(-1, Q8_0_BYTES)
        d = raw[:, :2].contiguous().view(torch.float16).to(p.computation_dtype)
        q = raw[:, 2:].contiguous().view(torch.int8).to(p.computation_dtype)
        return (d * q).reshape(p.real_shape)


class ParameterGGUF(torch.nn.Parameter):
    def __new__(cls, data=None, requires_grad=False, **_):
        return super().__new__(cls, data, requires_grad=False)

    def __init__(self, data=None, requires_grad=False, *, gguf_cls=None, real_shape=None, computation_dtype=torch.float16):
        self.gguf_cls = gguf_cls
        self.real_shape = torch.Size(real_shape) if real_shape is not None else torch.Size(data.shape)
        self.computation_dtype = computation_dtype

    @property
    def shape(self):
        return self.real_shape

    @classmethod
    def quantized(cls, weight: torch.Tensor) -> "ParameterGGUF":
        return cls(Q8_0.quantize(weight), gguf_cls=Q8_0, real_shape=weight.shape)

    def copy_with_data(self, data):
        return ParameterGGUF(data, gguf_cls=self.gguf_cls, real_shape=self.real_shape, computation_dtype=self.computation_dtype)

    def to(self, *args, **kwargs):
        return self.copy_with_data(self.data.to(*args, **kwargs))


def dequantize_tensor(tensor):
    if tensor is None or getattr(tensor, "gguf_cls", None) is None:
        return tensor
    return tensor.gguf_cls.dequantize_pytorch(tensor)
