"""Merges against PEFT's own functions (peft.utils.merge_utils) on the same changes; DARE's masks are seeded so the
comparison is exact."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils as peft

from lib_lorastack.doctor.merge import MERGE_METHODS, merge_stack, merge_tensors, module_seed
from lib_lorastack.doctor.stack import stack_item
from lib_lorastack.formats.loader import parse_state_dict
from tests.helpers.doctor_fixtures import FAMILY, correlated, doctor_targets, factors, lora, unit_delta


def _peft(method: str, tensors, weights, density: float, sign: str = "total") -> torch.Tensor:
    w = torch.tensor(weights, dtype=tensors[0].dtype)
    if method == "linear":
        return peft.task_arithmetic(tensors, w)
    if method == "magnitude_prune":
        return peft.magnitude_prune(tensors, w, density)
    if method == "dare_linear":
        return peft.dare_linear(tensors, w, density)
    return getattr(peft, method)(tensors, w, density, sign)


@pytest.mark.filterwarnings("ignore:The density")  # PEFT warns that density 1 prunes nothing
@pytest.mark.parametrize("method", MERGE_METHODS)
@pytest.mark.parametrize("density", [0.3, 1.0])
@pytest.mark.parametrize("sign", ["total", "frequency"])
def test_merge_tensors_equal_peft_bit_for_bit(method: str, density: float, sign: str) -> None:
    g = torch.Generator().manual_seed(3)
    tensors = [torch.randn(17, 23, generator=g) for _ in range(3)]
    tensors[1][:5] = -tensors[0][:5]  # sign conflicts
    weights = [0.8, -0.5, 1.3]
    seed = 1234
    torch.manual_seed(seed)
    want = _peft(method, tensors, weights, density, sign)
    ours = merge_tensors(
        method, tensors, weights, density=density, majority_sign=sign, generator=torch.Generator().manual_seed(seed)
    )
    assert torch.equal(ours, want), method


def test_dare_masks_are_reproducible_and_depend_on_the_seed() -> None:
    t = [torch.ones(50, 50)]
    one = merge_tensors("dare_linear", t, [1.0], density=0.4, generator=torch.Generator().manual_seed(module_seed(7, "x")))
    two = merge_tensors("dare_linear", t, [1.0], density=0.4, generator=torch.Generator().manual_seed(module_seed(7, "x")))
    other = merge_tensors("dare_linear", t, [1.0], density=0.4, generator=torch.Generator().manual_seed(module_seed(8, "x")))
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert module_seed(7, "x") != module_seed(7, "y")


@pytest.fixture(scope="module")
def items():
    targets = [t for t in doctor_targets() if "input_blocks.1." in t.module or "self_attn" in t.module]
    fa = factors(targets, rank=4, seed=1)
    a = lora("a", fa, alpha=2.0)
    b = lora("b", correlated(fa, seed=2, mix=0.6, sign=-1.0), alpha=4.0)
    c = lora("c", factors(targets[:3], 2, seed=3), alpha=None)
    return [stack_item(a, 0.9), stack_item(b, 0.7, lbw="1,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1"), stack_item(c, 1.2)]


@pytest.mark.parametrize("method", ["linear", "ties", "dare_ties", "dare_linear", "magnitude_prune"])
def test_merged_lora_equals_peft_on_the_same_changes(items, method: str) -> None:
    density, seed = 0.4, 11
    merged = merge_stack(items, FAMILY, method=method, density=density, seed=seed, rank=768, dtype=torch.float64)
    parsed = parse_state_dict(merged.tensors, family=FAMILY, name="merged")
    targets = {t for it in items for t in it.lora.modules}
    assert set(parsed.modules) == targets
    for t in targets:
        present = [it for it in items if t in it.lora.modules]
        taus = [unit_delta(it.lora, t, torch.float64) for it in present]
        torch.manual_seed(module_seed(seed, t))
        want = _peft(method, taus, [it.strength_for(t) for it in present], density)
        got = unit_delta(parsed, t, torch.float64)  # full rank kept: only fp32 storage rounding remains
        assert torch.allclose(got, want, atol=1e-6 * float(want.abs().max())), (method, t)
    assert merged.recipe["method"] == method and merged.recipe["density"] == density


def test_merge_compresses_to_the_rank_and_reports_the_energy(items) -> None:
    merged = merge_stack(items, FAMILY, method="ties", density=0.5, rank=4)
    assert merged.ranks == {4}
    blocks = merged.blocks()
    assert all(0 < b["kept"] < 1 for b in blocks.values())  # TIES on dense changes is full rank: rank 4 loses some


def test_bad_merge_arguments_are_named(items) -> None:
    with pytest.raises(ValueError, match="density must be in"):
        merge_stack(items, FAMILY, density=0)
    with pytest.raises(ValueError, match="merge method must be one of"):
        merge_stack(items, FAMILY, method="svd_magic")
    with pytest.raises(ValueError, match="rank must be at least 1"):
        merge_stack(items, FAMILY, rank=0)
