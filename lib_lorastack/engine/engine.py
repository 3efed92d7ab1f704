"""The patch engine: apply a whole stack to a model, fused or online, incrementally and transactionally."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from ..errors import PatchError
from .backups import BackupStore
from .device_cache import FactorCache
from .fused import batched_low_rank, canonical, low_rank_sum, new_value
from .online import OnlineState, build_state, can_go_online, forward_extra
from .plan import FUSED, ONLINE, ParamKey, ParamPlan, Skipped, StackLayer, build_plan

LOW_BIT_DTYPES = {getattr(torch, n) for n in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz") if hasattr(torch, n)}
MODES = ("fused", "online", "auto")


@dataclass
class ApplyReport:
    layers_written: int = 0  # parameters given a new fused value
    layers_restored: int = 0  # parameters written back to pristine
    layers_online: int = 0  # modules whose online state was (re)built
    weight_writes: int = 0  # tensor writes into the model (weights and biases)
    bytes_written: int = 0
    bytes_backed_up: int = 0
    seconds: float = 0.0
    skipped: list[Skipped] = field(default_factory=list)
    fused_params: int = 0  # parameters patched fused after the call
    online_params: int = 0  # parameters patched online after the call


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
    would be rounded away. ``backup_device``: "cpu" (pinned when CUDA is present) or "device".
    ``cache_bytes``: budget for LoRA factors kept on the device.
    """

    def __init__(
        self,
        modules: Mapping[str, torch.nn.Module],
        *,
        mode: str = "fused",
        backup_device: str = "cpu",
        cache_bytes: int = 2 << 30,
        compute_dtype: torch.dtype = torch.float32,
        chunk_bytes: int = 256 << 20,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        self.modules = modules
        self.mode = mode
        self.compute_dtype = compute_dtype
        self.chunk_bytes = chunk_bytes
        self.backups = BackupStore(backup_device)
        self.cache = FactorCache(cache_bytes)
        self.stats = EngineStats()
        self._applied: dict[ParamKey, ParamPlan] = {}
        self._online: dict[str, OnlineState] = {}
        self._bias_touched: dict[ParamKey, ParamKey] = {}  # weight key → bias key it changed
        self._created_bias: set[str] = set()
        self._stack: list[StackLayer] = []
        self._step: int | None = None
        self._fail_after_writes: int | None = None  # test hook: raise after this many writes

    # ----------------------------------------------------------------- public API
    def apply(self, stack: Sequence[StackLayer], *, step: int | None = None) -> ApplyReport:
        """Make the model compute base + every active LoRA of ``stack``; only what changed is rewritten.

        On any error the model is left exactly as it was before the call and ``PatchError`` names the LoRA and
        the layer."""
        start = time.perf_counter()
        plans, skipped = build_plan(stack, step, self.modules, self._choose_mode)
        report = ApplyReport(skipped=skipped)
        old_applied = dict(self._applied)
        changed = [k for k in {*plans, *old_applied} if _sig(plans.get(k)) != _sig(old_applied.get(k))]
        changed.sort()
        done: list[ParamKey] = []
        pending_drops: list[ParamKey] = []
        try:
            self._transition(changed, plans, old_applied, report, done, pending_drops)
        except BaseException as exc:
            self._rollback(done, plans, old_applied)
            self.stats.rollbacks += 1
            if isinstance(exc, PatchError):
                raise
            lora, layer = getattr(exc, "_lorastack_where", (None, None))
            raise PatchError(f"{type(exc).__name__}: {exc}; the model was left as it was", lora=lora, layer=layer) from exc
        for key in pending_drops:
            self.backups.drop(key)
        self._stack, self._step = list(stack), step
        report.fused_params = sum(1 for p in self._applied.values() if p.mode == FUSED)
        report.online_params = sum(1 for p in self._applied.values() if p.mode == ONLINE)
        report.seconds = time.perf_counter() - start
        self.stats.applies += 1
        return report

    def set_step(self, step: int) -> ApplyReport:
        """Re-evaluate the current stack's schedules at ``step`` (only LoRAs entering or leaving cost work)."""
        return self.apply(self._stack, step=step)

    def clear(self) -> ApplyReport:
        """Give every touched weight its pristine value back, bit for bit, and remove every online hook."""
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

    # ----------------------------------------------------------------- internals
    def _choose_mode(self, module: torch.nn.Module, param: str) -> str:
        online_ok = can_go_online(module, param)
        if self.mode == "online":
            return ONLINE if online_ok else FUSED
        if self.mode == "auto":
            weight = getattr(module, param, None)
            low_bit = isinstance(weight, torch.Tensor) and weight.dtype in LOW_BIT_DTYPES
            return ONLINE if online_ok and low_bit else FUSED
        return FUSED

    def _param(self, key: ParamKey) -> torch.Tensor:
        return getattr(self.modules[key[0]], key[1])

    def _transition(
        self,
        changed: list[ParamKey],
        plans: dict[ParamKey, ParamPlan],
        old: dict[ParamKey, ParamPlan],
        report: ApplyReport,
        done: list[ParamKey],
        pending_drops: list[ParamKey],
    ) -> None:
        to_fuse: list[ParamKey] = []
        to_online: list[ParamKey] = []
        for key in changed:
            before, after = old.get(key), plans.get(key)
            if before is not None and before.mode == ONLINE:
                self._drop_online(key[0])
            if after is None or after.mode == ONLINE:
                if before is not None and before.mode == FUSED:
                    self._restore(key, report, keep_backup=True)
                    pending_drops.append(key)
                    bias_key = self._bias_touched.pop(key, None)
                    if bias_key is not None:
                        pending_drops.append(bias_key)
                self._applied.pop(key, None)
                done.append(key)
                if after is not None:
                    to_online.append(key)
            else:
                to_fuse.append(key)
        self._write_fused(to_fuse, plans, report, done)
        for key in to_online:
            self._go_online(key, plans[key])
            report.layers_online += 1
            done.append(key)

    def _write_fused(
        self, keys: list[ParamKey], plans: dict[ParamKey, ParamPlan], report: ApplyReport, done: list[ParamKey]
    ) -> None:
        groups: dict[tuple, list[tuple[ParamKey, object]]] = defaultdict(list)
        singles: list[ParamKey] = []
        for key in keys:
            plan = plans[key]
            param = self._param(key)
            additive, multiplicative = canonical(plan.contributions)
            lowrank, rest = (None, additive) if multiplicative else self._low_rank(plan, param.device, additive)
            has_bias = any("bias" in c.adapter.tensors for c in additive)
            if lowrank is None or rest or multiplicative or has_bias:
                singles.append(key)
            else:
                groups[(tuple(param.shape), param.dtype, param.device, lowrank.up.shape[1])].append((key, lowrank))
        for (shape, _dtype, _device, _rank), members in groups.items():
            per = max(1, self.chunk_bytes // max(1, 4 * _numel(shape)))
            for i in range(0, len(members), per):
                chunk = members[i : i + per]
                w0s = [self._pristine(key, report) for key, _ in chunk]
                try:
                    values = batched_low_rank(w0s, [lr for _, lr in chunk])
                except BaseException as exc:
                    _tag(exc, plans[chunk[0][0]])
                    raise
                for (key, _), value in zip(chunk, values):
                    try:
                        self._write(key, value.view(shape), report)
                    except BaseException as exc:
                        _tag(exc, plans[key])
                        raise
                    self._applied[key] = plans[key]
                    done.append(key)
                    report.layers_written += 1
        for key in singles:
            plan = plans[key]
            w0 = self._pristine(key, report)
            try:
                value, bias = new_value(w0, plan.contributions, self.cache, self.compute_dtype)
                self._write(key, value, report)
                self._applied[key] = plan
                done.append(key)
                report.layers_written += 1
                self._write_bias(key, bias, report)
            except BaseException as exc:
                _tag(exc, plan)
                raise

    def _low_rank(self, plan: ParamPlan, device: torch.device, additive):
        try:
            return low_rank_sum(additive, self.cache, self.compute_dtype, device)
        except BaseException as exc:
            _tag(exc, plan)
            raise

    def _pristine(self, key: ParamKey, report: ApplyReport) -> torch.Tensor:
        param = self._param(key)
        copied = self.backups.save(key, param)
        report.bytes_backed_up += copied
        self.stats.bytes_backed_up += copied
        return self.backups.pristine(key, param.device)

    def _write(self, key: ParamKey, value: torch.Tensor, report: ApplyReport) -> None:
        if self._fail_after_writes is not None:
            if self._fail_after_writes <= 0:
                raise RuntimeError(f"injected failure before writing {key[0]}.{key[1]}")
            self._fail_after_writes -= 1
        param = self._param(key)
        with torch.no_grad():
            param.copy_(value)
        n = _nbytes(param)
        report.weight_writes += 1
        report.bytes_written += n
        self.stats.weight_writes += 1
        self.stats.bytes_written += n

    def _write_bias(self, key: ParamKey, delta: torch.Tensor | None, report: ApplyReport) -> None:
        module = self.modules[key[0]]
        bias_name = "in_proj_bias" if key[1] == "in_proj_weight" else "bias"
        bias_key = (key[0], bias_name)
        previous = self._bias_touched.get(key)
        if delta is None:
            if previous is not None:
                self._restore_bias(key, report, keep_backup=False)
            return
        if getattr(module, bias_name, None) is None:
            weight = self._param(key)
            setattr(module, bias_name, torch.nn.Parameter(torch.zeros(delta.shape[0], dtype=weight.dtype, device=weight.device), requires_grad=False))
            self._created_bias.add(key[0])
        b0 = self._pristine(bias_key, report)
        self._write(bias_key, (b0.to(delta.dtype) + delta).to(b0.dtype), report)
        self._bias_touched[key] = bias_key

    def _restore(self, key: ParamKey, report: ApplyReport | None, *, keep_backup: bool) -> None:
        param = self._param(key)
        if key in self.backups:
            with torch.no_grad():
                param.copy_(self.backups.pristine(key, param.device))
            if not keep_backup:
                self.backups.drop(key)
            if report is not None:
                report.layers_restored += 1
                report.weight_writes += 1
                self.stats.weight_writes += 1
        if key in self._bias_touched:
            self._restore_bias(key, report, keep_backup=keep_backup)

    def _restore_bias(self, key: ParamKey, report: ApplyReport | None, *, keep_backup: bool) -> None:
        bias_key = self._bias_touched[key]
        if bias_key[0] in self._created_bias:
            setattr(self.modules[bias_key[0]], bias_key[1], None)
            self._created_bias.discard(bias_key[0])
            self.backups.drop(bias_key)
        elif bias_key in self.backups:
            with torch.no_grad():
                self._param(bias_key).copy_(self.backups.pristine(bias_key, self._param(bias_key).device))
            if not keep_backup:
                self.backups.drop(bias_key)
        if not keep_backup:
            self._bias_touched.pop(key, None)

    def _go_online(self, key: ParamKey, plan: ParamPlan) -> None:
        module = self.modules[key[0]]
        try:
            state = build_state(module, plan.contributions, self.cache, self.compute_dtype)
        except BaseException as exc:
            _tag(exc, plan)
            raise
        state.handle = module.register_forward_hook(_make_hook(state))
        self._online[key[0]] = state
        self._applied[key] = plan

    def _drop_online(self, module_name: str) -> None:
        state = self._online.pop(module_name, None)
        if state is not None and state.handle is not None:
            state.handle.remove()

    def _rollback(self, done: list[ParamKey], plans: dict[ParamKey, ParamPlan], old: dict[ParamKey, ParamPlan]) -> None:
        """Bring every parameter this call changed back to its state before the call (same bits: the fused value
        is a pure function of the pristine value and the contributions)."""
        self._fail_after_writes = None
        for key in dict.fromkeys(reversed(done)):
            self._drop_online(key[0])
            before = old.get(key)
            if key in self.backups:
                self._restore(key, None, keep_backup=before is not None and before.mode == FUSED)
            self._applied.pop(key, None)
            if before is None:
                continue
            if before.mode == FUSED:
                value, bias = new_value(self.backups.pristine(key, self._param(key).device), before.contributions, self.cache, self.compute_dtype)
                with torch.no_grad():
                    self._param(key).copy_(value)
                if bias is not None:
                    self._write_bias(key, bias, ApplyReport())
                self._applied[key] = before
            else:
                self._go_online(key, before)
        for key, plan in old.items():  # untouched entries stay as they were
            self._applied.setdefault(key, plan)


def _make_hook(state: OnlineState):
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        extra = forward_extra(module, args[0], state)
        return output if extra is None else output + extra

    return hook


def _sig(plan: ParamPlan | None) -> tuple | None:
    return None if plan is None else plan.signature


def _tag(exc: BaseException, plan: ParamPlan) -> None:
    if not hasattr(exc, "_lorastack_where"):
        names = sorted({c.lora.name for c in plan.contributions})
        with contextlib.suppress(AttributeError):  # some builtin exceptions take no attributes
            exc._lorastack_where = (", ".join(names), f"{plan.key[0]}.{plan.key[1]}")  # type: ignore[attr-defined]


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
