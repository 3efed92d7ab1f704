"""CUDA graphs of fused switches: when only strengths change, the writes of a set of weights replay as one graph.

A graph is captured from exactly the per-weight function every other path uses (``fused.write_fused``), with the
scale vectors read from one device buffer that is refreshed before each replay. It is keyed by everything its
kernels depend on besides those scales (weights, compositions, the tensor-core choice, and the addresses of the
weights and of their pristine copies), and dropped as soon as any of that changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

MIN_WEIGHTS = 32  # fewer weights than this: eager launches are cheap enough
CAPACITY = 4


class FusedGraph:
    def __init__(self, graph: torch.cuda.CUDAGraph, scale: torch.Tensor, keep_alive: list) -> None:
        self.graph = graph
        self.scale = scale
        self.keep_alive = keep_alive  # every tensor the graph reads: it holds their addresses, not references

    def replay(self, host_scale: torch.Tensor) -> None:
        self.scale.copy_(host_scale, non_blocking=True)
        self.graph.replay()


class EagerReplay:
    """The CPU's stand-in for a graph: a replay runs the captured body again with the new scale buffer. The
    strength-only switch (``fast.py``) then works the same way on the CPU, where launches cost nothing, and its
    bits are those of the same per-weight function."""

    def __init__(self, body: Callable[..., None], scale: torch.Tensor) -> None:
        self.body = body
        self.scale = scale

    def replay(self, host_scale: torch.Tensor, only: set[int] | None = None) -> None:
        """``only``: the positions of the writes to run (the CPU has no reason to rewrite unchanged weights)."""
        self.scale.copy_(host_scale)
        self.body(self.scale, only)


class GraphCache:
    def __init__(self) -> None:
        self._graphs: OrderedDict[Hashable, FusedGraph] = OrderedDict()
        self.enabled = True
        self.failures: list[str] = []
        self.captures = 0
        self.replays = 0

    def get(self, signature: Hashable) -> FusedGraph | None:
        graph = self._graphs.get(signature)
        if graph is not None:
            self._graphs.move_to_end(signature)
        return graph

    def capture(
        self, signature: Hashable, host_scale: torch.Tensor, device: torch.device, body: Callable[..., None], keep_alive: list
    ) -> FusedGraph | None:
        """Run ``body`` once eagerly on a side stream (this is the apply's own write), then capture it for later
        replays. Returns None, and turns graphs off for this engine, if capture fails. On the CPU: run it once and
        keep it as an ``EagerReplay``."""
        if device.type == "cpu":
            scale = host_scale.clone()
            body(scale)
            eager = EagerReplay(body, scale)
            self.captures += 1
            self._graphs[signature] = eager  # type: ignore[assignment]
            while len(self._graphs) > CAPACITY:
                self._graphs.popitem(last=False)
            return eager  # type: ignore[return-value]
        scale = torch.empty(host_scale.shape, dtype=host_scale.dtype, device=device)
        scale.copy_(host_scale, non_blocking=True)
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            body(scale)
        current.wait_stream(side)
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                body(scale)
        except Exception as exc:  # capture is an optimisation: eager writes already happened above
            self.enabled = False
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return None
        self.captures += 1
        entry = FusedGraph(graph, scale, keep_alive)
        self._graphs[signature] = entry
        while len(self._graphs) > CAPACITY:
            self._graphs.popitem(last=False)
        return entry

    def clear(self) -> None:
        self._graphs.clear()

    def trim_eager(self, keep: Callable[[Hashable], bool]) -> None:
        """Drop the CPU replays whose signature ``keep`` refuses: each holds its writes' programs and pristine
        copies in the memory the model lives in, and a CPU replay saves no launches worth that."""
        for signature in [s for s, g in self._graphs.items() if isinstance(g, EagerReplay) and not keep(s)]:
            del self._graphs[signature]

    def __len__(self) -> int:
        return len(self._graphs)
