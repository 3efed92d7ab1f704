"""The patch engine: apply a whole stack to a model, fused or online, incrementally and transactionally.

Where each part lives: ``plan.py`` says what every parameter must become and diffs on signatures; ``fused.py`` is the
one function that computes a fused value; ``backups.py`` keeps pristine copies; ``stream.py`` brings CPU-side
copies back ahead of use; ``graphs.py`` replays strength-only switches as CUDA graphs; ``online.py`` computes LoRAs
in the forward; ``transaction.py`` puts everything back when an apply fails. This module orders those steps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import PatchError
from .backups import BackupStore
from .batch import Write, WriteBatch, exact_half_products
from .device_cache import FactorCache
from .fast import FastSwitch, OnlineSwitch, structure
from .fused import WeightProgram, choose_path, write_fused
from .graphs import MIN_WEIGHTS, GraphCache
from .online import OnlineLayer, can_go_online, make_banks, rescale
from .os_memory import return_freed_memory
from .packed import packed_kind
from .plan import FUSED, ONLINE, Binder, BlockMemo, ParamKey, ParamPlan, Skipped, StackLayer, build_plan
from .programs import ProgramCache
from .stream import PristineStream
from .transaction import Transaction, tag

LOW_BIT_DTYPES = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n)}
MODES = ("fused", "online", "auto")


@dataclass
class ApplyReport:
    layers_written: int = 0  # parameters given a new fused value
    layers_restored: int = 0  # parameters written back to pristine
    layers_online: int = 0  # modules whose online state was (re)built or rescaled
    weight_writes: int = 0  # tensor writes into the model (weights and biases)
    bytes_written: int = 0
    bytes_backed_up: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    fused_params: int = 0  # parameters patched fused after the call
    online_params: int = 0  # parameters patched online after the call
    graph: str = ""  # "replayed" / "captured" when the fused writes ran as a CUDA graph


@dataclass
class EngineStats:
    weight_writes: int = 0
    bytes_written: int = 0
    bytes_backed_up: int = 0
    applies: int = 0
    rollbacks: int = 0


class PatchEngine:
    """Applies stacks of LoRAs to ``modules`` (checkpoint-style name → live module, see ``resolve_modules``).

    ``mode``: "fused" writes weights; "online" adds the LoRAs in the forward of Linear/Conv2d/norm layers (other
    layers are fused); "auto" goes online only for weights stored in 8-bit float formats, where a fused change
    would be rounded away. ``backup_device``: "auto" (on the GPU while its memory allows, within
    ``backup_budget`` bytes when given, else pinned CPU memory), "cpu" or "device". ``cache_bytes``: budget for
    LoRA factors and per-weight programs kept on the device. ``tensor_cores``: run the products of fp16/bf16 factors
    on the matrix units (exact, see ``fused.py``). ``graphs``: replay strength-only switches as CUDA graphs.
    """

    def __init__(
        self,
        modules: Mapping[str, torch.nn.Module],
        *,
        mode: str = "fused",
        backup_device: str = "auto",
        backup_budget: int | None = None,
        cache_bytes: int = 2 << 30,
        compute_dtype: torch.dtype = torch.float32,
        tensor_cores: bool = True,
        graphs: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.modules = modules
        self.mode = mode
        self.compute_dtype = compute_dtype
        self.tensor_cores = tensor_cores
        self.backups = BackupStore(backup_device, backup_budget)
        self.cache = FactorCache(cache_bytes)
        self.graphs = GraphCache()
        self.graphs.enabled = graphs
        self.stats = EngineStats()
        self._binder = Binder(modules)
        self._blocks = BlockMemo()
        self.programs = ProgramCache(self.cache, compute_dtype)
        self._applied_store: dict[ParamKey, ParamPlan] = {}
        self._stale = False  # a fast switch changed strengths: the plans are rebuilt from the stack when needed
        self._fast: FastSwitch | None = None
        self._fast_online_switch: OnlineSwitch | None = None
        self._last_graph: tuple | None = None
        self._online: dict[str, OnlineLayer] = {}
        self._bias_touched: dict[ParamKey, ParamKey] = {}  # weight key → bias key it changed
        self._created_bias: set[str] = set()
        self._sample_scales: dict[ParamKey, torch.Tensor] = {}  # per-sample strengths of online layers
        self._stack: list[StackLayer] = []
        self._step: int | None = None
        self._fail_after_writes: int | None = None  # test hook: raise after this many writes

    # ----------------------------------------------------------------- public API
    def apply(self, stack: Sequence[StackLayer], *, step: int | None = None) -> ApplyReport:
        """Make the model compute base + every active LoRA of ``stack``; only what changed is rewritten.

        On any error the model is left exactly as it was before the call and ``PatchError`` names the LoRA and
        the layer."""
        start = time.perf_counter()
        with torch.no_grad():
            report = self._fast_apply(stack, step)
            if report is None:
                report = self._fast_online(stack, step)
            if report is None:
                self._fast = None
                self._fast_online_switch = None
                self._last_graph = None
                plans, skipped = build_plan(stack, step, self._binder, self._choose_mode, self._blocks)
                report = self._commit(plans, skipped)
                self._remember_graph(stack, step)
                self._remember_online(stack, step, plans)
        self._stack, self._step = list(stack), step
        report.seconds = time.perf_counter() - start
        return report

    def apply_per_sample(self, stacks: Sequence[Sequence[StackLayer]], *, step: int | None = None) -> ApplyReport:
        """Different strengths for each image of one batch: ``stacks[i]`` is image i's stack (a LoRA an image does
        not use may be left out of its stack). Layers that can go online carry a per-sample scale; layers that can
        only be fused (MultiheadAttention, embeddings) must get the same strength in every image, else
        ``PatchError`` names them. A batch of ``k·len(stacks)`` rows (e.g. cond and uncond) repeats the scales."""
        start = time.perf_counter()
        if not stacks:
            raise ValueError("apply_per_sample needs at least one stack")
        union: dict[int, StackLayer] = {}
        for stack in stacks:
            for layer in stack:
                union.setdefault(id(layer.lora), StackLayer(layer.lora))
        self._fast = None
        self._fast_online_switch = None
        self._last_graph = None
        with torch.no_grad():
            plans, skipped = build_plan(list(union.values()), None, self._binder, self._choose_mode_online, self._blocks)
            per_sample = self._per_sample_strengths(plans, stacks, step)
            report = self._commit(plans, skipped, per_sample)
        self._stack, self._step = [], step
        report.seconds = time.perf_counter() - start
        return report

    @property
    def _applied(self) -> dict[ParamKey, ParamPlan]:
        if self._stale:
            self._stale = False
            self._applied_store, _ = build_plan(self._stack, self._step, self._binder, self._choose_mode, self._blocks)
            for key, plan in self._applied_store.items():  # online layers hold the plan their factors were scaled by
                layer = self._online.get(key[0])
                if layer is not None and plan.mode == ONLINE:
                    layer.plan = plan
        return self._applied_store

    def _fast_apply(self, stack: Sequence[StackLayer], step: int | None) -> ApplyReport | None:
        """Only strengths changed since an apply that ran as a CUDA graph: replay it, without planning."""
        fast = self._fast
        if fast is None or self._fail_after_writes is not None:
            return None
        if not stack:  # on the CPU the planned clear hands the backups' memory over instead of copying
            return self._fast_clear(fast) if fast.params[0].device.type != "cpu" else None
        if structure(stack, step) != fast.structure:
            return None
        strengths = fast.strengths(stack)
        report = ApplyReport(fused_params=len(fast.keys))
        if torch.equal(strengths, fast.current):
            return report
        if not fast.usable(strengths):
            return None
        with exact_half_products():
            written = fast.write(strengths, self.compute_dtype)
        if fast.params[0].device.type == "cpu":  # the GPU's replay path stays free of the CPU's bookkeeping
            return_freed_memory(self.programs.release_cpu())
        self._stale = True
        self.graphs.replays += 1
        n = len(written)
        nbytes = fast.nbytes if n == len(fast.keys) else sum(_nbytes(fast.params[i]) for i in written)
        report.layers_written = report.weight_writes = n
        report.bytes_written = nbytes
        report.graph = "replayed"
        self.stats.weight_writes += n
        self.stats.bytes_written += nbytes
        self.stats.applies += 1
        return report

    def _fast_online(self, stack: Sequence[StackLayer], step: int | None) -> ApplyReport | None:
        """Only strengths changed since an apply that left a wholly online, low-rank stack: fold the new strengths
        into the up factors, without planning."""
        fast = self._fast_online_switch
        if fast is None or not stack or self._fail_after_writes is not None or structure(stack, step) != fast.structure:
            return None
        strengths = fast.strengths(stack)
        report = ApplyReport(online_params=len(fast.layers))
        if torch.equal(strengths, fast.current):
            return report
        fast.write(strengths, self.compute_dtype)
        self._stale = True  # the layers' plans and ``_applied`` are rebuilt from the stack when something needs them
        report.layers_online = len(fast.layers)
        self.stats.applies += 1
        return report

    def _remember_online(self, stack: Sequence[StackLayer], step: int | None, plans: Mapping[ParamKey, ParamPlan]) -> None:
        """After an apply that left every patched parameter online: get ready for online strength switches.
        ``plans``: this apply's own plans (an unchanged parameter keeps an older stack's plan object, whose stack
        positions may differ)."""
        if not plans or len(plans) != len(self._applied_store) or len(self._online) != len(plans):
            return
        for key, plan in plans.items():
            layer = self._online.get(key[0])
            if layer is None or plan.mode != ONLINE or _sig(self._applied_store.get(key)) != plan.signature:
                return
        for key, plan in plans.items():
            self._online[key[0]].plan = plan
            self._applied_store[key] = plan
        self._fast_online_switch = OnlineSwitch.from_layers(stack, step, list(self._online.values()), self._blocks)

    def _fast_clear(self, fast: FastSwitch) -> ApplyReport:
        """Every patched weight is in the fast switch's graph and has its copy on its GPU: one multi-tensor copy."""
        torch._foreach_copy_(fast.params, [self.backups.get(k) for k in fast.keys])
        for key in fast.keys:
            self.backups.drop(key)
        self._applied_store = {}
        self._stale = False
        self._fast = None
        self._last_graph = None
        self.graphs.clear()
        n = len(fast.keys)
        self.stats.weight_writes += n
        self.stats.bytes_written += fast.nbytes
        self.stats.applies += 1
        return ApplyReport(layers_restored=n, weight_writes=n, bytes_written=fast.nbytes)

    def _remember_graph(self, stack: Sequence[StackLayer], step: int | None) -> None:
        """After an apply whose every patched weight was written by one CUDA graph: get ready for fast switches."""
        if self._last_graph is None:
            return
        batch, graph = self._last_graph
        self._last_graph = None
        applied = self._applied_store
        if graph is None or len(applied) != len(batch.writes) or any(p.mode != FUSED for p in applied.values()):
            return
        self._fast = FastSwitch.from_batch(stack, step, batch, graph, self._blocks)

    def set_step(self, step: int) -> ApplyReport:
        """Re-evaluate the current stack's schedules at ``step`` (only LoRAs entering or leaving cost work)."""
        return self.apply(self._stack, step=step)

    def clear(self) -> ApplyReport:
        """Give every touched weight its pristine value back, bit for bit, and remove every online layer."""
        return self.apply([])

    @contextmanager
    def applied(self, stack: Sequence[StackLayer], *, step: int | None = None) -> Iterator[ApplyReport]:
        """``with engine.applied(stack): …`` — the stack is in place inside, the previous state after."""
        previous, previous_step = list(self._stack), self._step
        report = self.apply(stack, step=step)
        try:
            yield report
        finally:
            self.apply(previous, step=previous_step)

    @property
    def stack(self) -> list[StackLayer]:
        return list(self._stack)

    def backup_bytes(self) -> int:
        return self.backups.nbytes()

    def touched_bytes(self) -> int:
        """Bytes of the parameters currently patched fused (weights and the biases a stack changed)."""
        total = 0
        for key, plan in self._applied.items():
            if plan.mode == FUSED:
                total += _nbytes(self._param(key))
                bias_key = self._bias_touched.get(key)
                if bias_key is not None and bias_key[0] not in self._created_bias:
                    total += _nbytes(self._param(bias_key))
        return total

    def patched(self) -> dict[ParamKey, str]:
        """Each patched parameter and its mode."""
        return {k: p.mode for k, p in self._applied.items()}

    def written(self) -> list[ParamKey]:
        """Every parameter whose value the fused patches changed: weights, and the biases their adapters changed
        (a bias the engine had to create is listed in ``created_biases``)."""
        keys = [k for k, p in self._applied.items() if p.mode == FUSED]
        return keys + [self._bias_touched[k] for k in keys if k in self._bias_touched]

    def created_biases(self) -> set[str]:
        """Modules that had no bias until an adapter's bias change needed one."""
        return set(self._created_bias)

    def forget_loras(self) -> None:
        """Drop cached factors, programs and graphs (the patched state stays)."""
        self._applied  # noqa: B018 - bring the plans up to date before the graph that wrote them goes
        self._fast = None
        self.cache.clear()
        self.programs.clear()
        self.graphs.clear()
        self._binder.forget()

    # ----------------------------------------------------------------- the transition
    def _commit(
        self, plans: dict[ParamKey, ParamPlan], skipped: list[Skipped], per_sample: dict[ParamKey, torch.Tensor] | None = None
    ) -> ApplyReport:
        report = ApplyReport(skipped=skipped)
        old = self._applied
        changed = sorted(k for k in plans.keys() | old.keys() if _sig(plans.get(k)) != _sig(old.get(k)))
        freed = 0
        if changed:
            self._trim_cpu_caches(plans)  # before this apply builds its own programs: they are not needed together
            self.backups.begin()
            txn = Transaction(dict(old))
            try:
                self._transition(changed, plans, report, txn, per_sample)
            except BaseException as exc:
                self._fail_after_writes = None
                txn.rollback(self)
                self.stats.rollbacks += 1
                if isinstance(exc, PatchError):
                    raise
                lora, layer = getattr(exc, "_lorastack_where", (None, None))
                raise PatchError(f"{type(exc).__name__}: {exc}; the model was left as it was", lora=lora, layer=layer) from exc
            held = self.backups.nbytes_on("cpu")
            for key in txn.pending_swaps:
                param = self._param(key)
                if not self.backups.swap_in(key, param):
                    self.backups.restore(key, param)
            for key in txn.pending_drops:
                self.backups.drop(key)
            freed += held - self.backups.nbytes_on("cpu")
        if not any(p.mode == FUSED for p in self._applied.values()):
            self.graphs.clear()
        self._trim_cpu_caches(self._applied)
        return_freed_memory(freed + self.programs.release_cpu())
        report.fused_params = sum(1 for p in self._applied.values() if p.mode == FUSED)
        report.online_params = sum(1 for p in self._applied.values() if p.mode == ONLINE)
        self.stats.applies += 1
        return report

    def _trim_cpu_caches(self, plans: Mapping[ParamKey, ParamPlan]) -> None:
        """CPU programs and replays of compositions other than ``plans``' go (see ``programs.py``)."""
        current = {(key, plan.composition) for key, plan in plans.items()}
        self.graphs.trim_eager(lambda signature: all((entry[0], entry[1]) in current for entry in signature))
        self.programs.trim(current)

    def _transition(
        self,
        changed: list[ParamKey],
        plans: dict[ParamKey, ParamPlan],
        report: ApplyReport,
        txn: Transaction,
        per_sample: dict[ParamKey, torch.Tensor] | None,
    ) -> None:
        old = txn.old
        to_fuse: list[ParamKey] = []
        to_build: list[ParamKey] = []
        to_rescale: list[ParamKey] = []
        to_restore: list[ParamKey] = []
        for key in changed:
            before, after = old.get(key), plans.get(key)
            if before is not None and before.mode == ONLINE:
                layer = self._online.get(key[0])
                if (
                    per_sample is None
                    and after is not None
                    and after.mode == ONLINE
                    and after.composition == before.composition
                    and layer is not None
                    and layer.dense_weight is None
                    and layer.sample_scale is None
                ):
                    to_rescale.append(key)
                    continue
                self._drop_online(key[0])
                self._applied.pop(key, None)
                txn.done.append(key)
            if after is None or after.mode == ONLINE:
                if before is not None and before.mode == FUSED:
                    to_restore.append(key)
                if after is not None:
                    to_build.append(key)
            else:
                to_fuse.append(key)
        self._restore_many(to_restore, report, txn, {k for k in to_restore if k not in plans})
        self._write_fused(to_fuse, plans, report, txn)
        self._go_online(to_build, plans, report, txn, per_sample)
        self._rescale_online(to_rescale, plans, report, txn)

    # ----------------------------------------------------------------- fused writes
    def _write_fused(self, keys: list[ParamKey], plans: Mapping[ParamKey, ParamPlan], report: ApplyReport, txn: Transaction) -> None:
        if not keys:
            return
        writes = []
        for key in keys:
            plan = plans[key]
            param = self._param(key)
            try:
                program = self.program(plan, param)
            except BaseException as exc:
                tag(exc, plan)
                raise
            writes.append(Write(key, plan, param, program, choose_path(program, plan.strengths, param, self.tensor_cores)))
        batch = WriteBatch(writes, self.compute_dtype)
        with exact_half_products():
            if self._try_graph(batch, report, txn):
                return
            source = PristineStream(self.backups, [w.key for w in batch.writes], lambda k: self._param(k).device)
            for w, operand, rest_scale in batch.operands(batch.device_scales()):
                try:
                    self._check_fault(w.key)
                    first = w.key not in self.backups
                    if first:
                        self._save(w.key, report)
                    w0 = w.param if first else source.get(w.key)
                    bias = write_fused(w.param, w0, w.program, w.plan, operand, path=w.path, compute_dtype=self.compute_dtype,
                                       rest_scale=rest_scale)
                    self._count_write(w.param, report)
                    self._applied[w.key] = w.plan
                    txn.done.append(w.key)
                    report.layers_written += 1
                    self._write_bias(w.key, bias, report)
                except BaseException as exc:
                    tag(exc, w.plan)
                    raise

    def _try_graph(self, batch: WriteBatch, report: ApplyReport, txn: Transaction) -> bool:
        """A strength-only switch of many weights on one GPU, with their pristine copies on that GPU: replay (or
        capture) the writes as one CUDA graph."""
        writes = batch.writes
        if not self.graphs.enabled or len(writes) < MIN_WEIGHTS or self._fail_after_writes is not None:
            return False
        device = writes[0].param.device
        if device.type not in ("cuda", "cpu"):
            return False
        for w in writes:
            before = txn.old.get(w.key)
            if (
                w.param.device != device
                or not w.program.graph_safe
                or before is None
                or before.mode != FUSED
                or before.composition != w.plan.composition
                or w.key not in self.backups
                or self.backups.get(w.key).device != device
                or w.key in self._bias_touched
            ):
                return False
        backups = {w.key: self.backups.get(w.key) for w in writes}
        txn.done.extend(w.key for w in writes)  # before any kernel runs: a failure below rolls all of them back
        signature = tuple((w.key, w.plan.composition, w.path, w.param.data_ptr(), backups[w.key].data_ptr()) for w in writes)
        graph = self.graphs.get(signature)
        if graph is not None:
            graph.replay(batch.host_scale)
            self.graphs.replays += 1
            report.graph = "replayed"
            self._last_graph = (batch, graph)
        else:

            def body(scale: torch.Tensor, only: set[int] | None = None) -> None:
                for index, (w, operand, rest_scale) in enumerate(batch.operands({device: scale})):
                    if only is not None and index not in only:
                        continue
                    write_fused(w.param, backups[w.key], w.program, w.plan, operand, path=w.path, compute_dtype=self.compute_dtype,
                                rest_scale=rest_scale)

            keep = [t for w in writes for t in w.program.tensors()]
            graph = self.graphs.capture(signature, batch.host_scale, device, body, keep + list(backups.values()))
            report.graph = "captured" if graph is not None else "failed"
            self._last_graph = (batch, graph)
        for w in writes:
            self._count_write(w.param, report)
            self._applied[w.key] = w.plan
            report.layers_written += 1
        return True

    def program(self, plan: ParamPlan, param: torch.Tensor) -> WeightProgram:
        """The weight's program for ``plan``'s composition (factors concatenated on the weight's device), cached."""
        return self.programs.get(plan, param)

    def write_one(self, key: ParamKey, plan: ParamPlan) -> torch.Tensor | None:
        """Write one weight's fused value for ``plan`` from its backup, through the same function and operand layout
        as every apply; returns the bias change (used by the rollback)."""
        param = self._param(key)
        program = self.program(plan, param)
        w = Write(key, plan, param, program, choose_path(program, plan.strengths, param, self.tensor_cores))
        batch = WriteBatch([w], self.compute_dtype)
        with exact_half_products():
            _, operand, rest_scale = next(batch.operands(batch.device_scales()))
            w0 = self.backups.pristine(key, param.device)
            return write_fused(param, w0, program, plan, operand, path=w.path, compute_dtype=self.compute_dtype, rest_scale=rest_scale)

    # ----------------------------------------------------------------- rollback (``Transaction`` calls these)
    def put_back(self, key: ParamKey, before: ParamPlan | None) -> None:
        """``key`` back to ``before`` (None: pristine): its online layer removed, its pristine value restored, then
        its fused value rewritten through ``write_one`` or its online layer rebuilt."""
        self._drop_online(key[0])
        if key in self.backups:
            self._restore(key, None, keep_backup=before is not None and before.mode == FUSED)
        self._applied.pop(key, None)
        if before is None:
            return
        if before.mode == FUSED:
            bias = self.write_one(key, before)
            if bias is not None:
                self._write_bias(key, bias, None)
            self._applied[key] = before
        else:
            self._rebuild_online(key, before)

    def keep_untouched(self, old: Mapping[ParamKey, ParamPlan]) -> None:
        for key, plan in old.items():
            self._applied.setdefault(key, plan)

    # ----------------------------------------------------------------- online layers
    def _go_online(
        self, keys: list[ParamKey], plans: Mapping[ParamKey, ParamPlan], report: ApplyReport, txn: Transaction,
        per_sample: dict[ParamKey, torch.Tensor] | None = None,
    ) -> None:
        built: list[OnlineLayer] = []
        for key in keys:
            plan = plans[key]
            layer = OnlineLayer(self.modules[key[0]], plan)
            try:
                layer.build(self.program(plan, self._param(key)), self.compute_dtype)
            except BaseException as exc:
                tag(exc, plan)
                raise
            built.append(layer)
        make_banks(built)
        if per_sample is not None:
            for layer in built:
                self._set_sample_scale(layer, per_sample[layer.plan.key])
        rescale(built, self.compute_dtype)
        for layer in built:
            layer.install()
            self._online[layer.plan.key[0]] = layer
            self._applied[layer.plan.key] = layer.plan
            txn.done.append(layer.plan.key)
            report.layers_online += 1

    def _set_sample_scale(self, layer: OnlineLayer, matrix: torch.Tensor) -> None:
        """``matrix``: [samples, contributions] strengths; the low-rank part gets a per-sample, per-rank scale."""
        dense = [i for i in range(matrix.shape[1]) if i not in layer.low_rank]
        varying = [i for i in dense if not bool((matrix[:, i] == matrix[0, i]).all())]
        if varying:
            c = [*layer.plan.canonical()[0], *layer.plan.canonical()[1]][varying[0]]
            raise PatchError(
                f"{c.lora.name}: different strengths per image on {layer.plan.key[0]}, where its change is not low-rank "
                "(one value per batch there)", lora=c.lora.name, layer=f"{layer.plan.key[0]}.{layer.plan.key[1]}",
            )
        self._sample_scales[layer.plan.key] = matrix
        if layer.program is None:
            return
        layer.unit = True
        ranks = torch.tensor(layer.ranks, dtype=torch.long)
        per_rank = matrix[:, layer.low_rank].repeat_interleave(ranks, dim=1)
        weight = layer.module.weight
        layer.sample_scale = per_rank.to(device=weight.device, dtype=layer.dtype)

    def _rebuild_online(self, key: ParamKey, plan: ParamPlan) -> None:
        """Put an online layer back as it was before a failed apply (used by the rollback)."""
        matrix = self._sample_scales.get(key)
        self._go_online([key], {key: plan}, ApplyReport(), Transaction({}), None if matrix is None else {key: matrix})

    def _rescale_online(self, keys: list[ParamKey], plans: Mapping[ParamKey, ParamPlan], report: ApplyReport, txn: Transaction) -> None:
        layers = []
        for key in keys:
            layer = self._online[key[0]]
            layer.plan = plans[key]
            layers.append(layer)
            self._applied[key] = plans[key]
            txn.done.append(key)
            report.layers_online += 1
        rescale(layers, self.compute_dtype)

    def _drop_online(self, module_name: str) -> None:
        layer = self._online.pop(module_name, None)
        if layer is not None:
            layer.remove()
            if layer.sample_scale is not None and self._applied.get(layer.plan.key) is not layer.plan:
                self._sample_scales.pop(layer.plan.key, None)

    def _per_sample_strengths(
        self, plans: dict[ParamKey, ParamPlan], stacks: Sequence[Sequence[StackLayer]], step: int | None
    ) -> dict[ParamKey, torch.Tensor]:
        """Per online key: [samples, contributions] strengths (its plan carries the first image's); a key that can
        only be fused, or that has a multiplicative change, gets the strength common to every image."""
        per_lora = [{id(layer.lora): layer for layer in stack if layer.active_at(step)} for stack in stacks]
        out: dict[ParamKey, torch.Tensor] = {}
        for key, plan in list(plans.items()):
            contributions = [*plan.canonical()[0], *plan.canonical()[1]]
            matrix = [[_sample_strength(sample.get(id(c.lora)), c) for c in contributions] for sample in per_lora]
            if plan.mode == FUSED or plan.canonical()[1]:
                if any(row != matrix[0] for row in matrix):
                    names = ", ".join(sorted({c.lora.name for c in contributions}))
                    raise PatchError(
                        f"{names}: different strengths per image on {key[0]}, which can only be fused (one value per batch)",
                        lora=names, layer=f"{key[0]}.{key[1]}",
                    )
                common = [c._replace(strength=s) for c, s in zip(contributions, matrix[0]) if s != 0.0]
                if common:
                    plans[key] = ParamPlan(key, plan.mode, common)
                else:
                    del plans[key]
                continue
            first = ParamPlan(key, ONLINE, [c._replace(strength=s) for c, s in zip(contributions, matrix[0])])
            first._signature = (*first.signature[:3], ("per-sample", tuple(map(tuple, matrix))))
            plans[key] = first
            out[key] = torch.tensor(matrix, dtype=torch.float32)
        return out

    def _choose_mode_online(self, module: torch.nn.Module, param: str) -> str:
        return ONLINE if can_go_online(module, param) else FUSED

    # ----------------------------------------------------------------- weights, biases, backups
    def _choose_mode(self, module: torch.nn.Module, param: str) -> str:
        online_ok = can_go_online(module, param)
        if online_ok and packed_kind(getattr(module, param, None)) is not None:
            return ONLINE  # packed weights (GGUF, 4-bit) are never written: online in every mode (see packed.py)
        if self.mode == "online":
            return ONLINE if online_ok else FUSED
        if self.mode == "auto":
            weight = getattr(module, param, None)
            low_bit = isinstance(weight, torch.Tensor) and weight.dtype in LOW_BIT_DTYPES
            return ONLINE if online_ok and low_bit else FUSED
        return FUSED

    def _param(self, key: ParamKey) -> torch.Tensor:
        return getattr(self.modules[key[0]], key[1])

    def _save(self, key: ParamKey, report: ApplyReport | None) -> None:
        copied = self.backups.save(key, self._param(key))
        self.stats.bytes_backed_up += copied
        if report is not None:
            report.bytes_backed_up += copied

    def _check_fault(self, key: ParamKey) -> None:
        if self._fail_after_writes is not None:
            if self._fail_after_writes <= 0:
                raise RuntimeError(f"injected failure before writing {key[0]}.{key[1]}")
            self._fail_after_writes -= 1

    def _count_write(self, param: torch.Tensor, report: ApplyReport | None) -> None:
        n = _nbytes(param)
        if report is not None:
            report.weight_writes += 1
            report.bytes_written += n
        self.stats.weight_writes += 1
        self.stats.bytes_written += n

    def _write_bias(self, key: ParamKey, delta: torch.Tensor | None, report: ApplyReport | None) -> None:
        module = self.modules[key[0]]
        bias_name = "in_proj_bias" if key[1] == "in_proj_weight" else "bias"
        bias_key = (key[0], bias_name)
        previous = self._bias_touched.get(key)
        if delta is None:
            if previous is not None:
                self._restore_bias(key, report, keep_backup=False)
            return
        self._check_fault(bias_key)
        if getattr(module, bias_name, None) is None:
            weight = self._param(key)
            setattr(module, bias_name, torch.nn.Parameter(torch.zeros(delta.shape[0], dtype=weight.dtype, device=weight.device), requires_grad=False))
            self._created_bias.add(key[0])
        bias = self._param(bias_key)
        if bias_key not in self.backups:
            self._save(bias_key, report)
        b0 = self.backups.pristine(bias_key, bias.device)
        bias.copy_((b0.to(delta.dtype) + delta).to(b0.dtype))
        self._count_write(bias, report)
        self._bias_touched[key] = bias_key

    def _restore_many(self, keys: list[ParamKey], report: ApplyReport, txn: Transaction, leaving: set[ParamKey]) -> None:
        """Pristine values back into ``keys`` (their backups are freed once the apply succeeds): copies between
        tensors on one GPU go as one multi-tensor launch per dtype. CPU weights in ``leaving`` (unpatched from now
        on, nothing reads them before the end of the apply) take over their backup's memory when the apply
        succeeds instead of a copy (``BackupStore.swap_in``)."""
        groups: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for key in keys:
            txn.done.append(key)  # first: a failure below restores it again from its backup
            param = self._param(key)
            backup = self.backups.get(key)
            if key in leaving and param.device.type == "cpu" and backup.device.type == "cpu":
                txn.pending_swaps.append(key)
            elif backup.device == param.device and backup.dtype == param.dtype:
                dst, src = groups.setdefault((param.device, param.dtype), ([], []))
                dst.append(param)
                src.append(backup)
            else:
                self.backups.restore(key, param)
            report.layers_restored += 1
            self._count_write(param, report)
            self._applied.pop(key, None)
            txn.pending_drops.append(key)
        for dst, src in groups.values():
            torch._foreach_copy_(dst, src)
        for key in keys:
            bias_key = self._bias_touched.get(key)
            if bias_key is not None:
                self._restore_bias(key, report, keep_backup=True)
                self._bias_touched.pop(key, None)
                txn.pending_drops.append(bias_key)

    def _restore(self, key: ParamKey, report: ApplyReport | None, *, keep_backup: bool) -> None:
        param = self._param(key)
        if key in self.backups:
            self.backups.restore(key, param)
            if not keep_backup:
                self.backups.drop(key)
            if report is not None:
                report.layers_restored += 1
                self._count_write(param, report)
        if key in self._bias_touched:
            self._restore_bias(key, report, keep_backup=keep_backup)

    def _restore_bias(self, key: ParamKey, report: ApplyReport | None, *, keep_backup: bool) -> None:
        bias_key = self._bias_touched[key]
        if bias_key[0] in self._created_bias:
            setattr(self.modules[bias_key[0]], bias_key[1], None)
            self._created_bias.discard(bias_key[0])
            self.backups.drop(bias_key)
        elif bias_key in self.backups:
            self.backups.restore(bias_key, self._param(bias_key))
            if not keep_backup:
                self.backups.drop(bias_key)
        if not keep_backup:
            self._bias_touched.pop(key, None)


def _sample_strength(layer: StackLayer | None, c) -> float:
    return 0.0 if layer is None else layer.strength_for(c.target)


def _sig(plan: ParamPlan | None) -> tuple | None:
    return None if plan is None else plan.signature


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
