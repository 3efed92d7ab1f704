"""Doctor metrics against brute force: ΔW formed explicitly, norms, cosines and principal-angle overlaps from SVDs
of the dense matrices (the doctor never forms them)."""

from __future__ import annotations

import math

import pytest
import torch

from lib_lorastack.doctor.basefile import BaseCheckpoint, CheckpointError
from lib_lorastack.doctor.metrics import ENERGY_KEPT, measure
from lib_lorastack.doctor.stack import stack_item
from lib_lorastack.syntax.blocks import block_id
from tests.helpers.doctor_fixtures import (
    FAMILY,
    correlated,
    doctor_targets,
    factors,
    loha,
    lora,
    model_and_checkpoint,
    unit_delta,
)


def _bases(x: torch.Tensor, energy: float | None = None) -> dict[str, torch.Tensor]:
    """Orthonormal bases of the column (``out``) and row (``in``) spaces of the dense ``x``: every direction with a
    non-zero singular value, or (``energy``) the leading ones holding that share of ‖x‖². From the eigenvectors of
    the smaller of ``x·xᵀ`` and ``xᵀ·x`` (σ² = eigenvalues); the other side as ``xᵀu/σ`` (or ``xv/σ``)."""
    wide = x.shape[0] <= x.shape[1]
    lam, w = torch.linalg.eigh(x @ x.T if wide else x.T @ x)
    lam, w = lam.flip(0).clamp_min(0), w.flip(1)
    if energy is None:
        k = int((lam > lam[0] * 1e-12).sum())  # eigenvalue noise is ~1e-16·max
    else:
        k = int(((torch.cumsum(lam, 0) - lam) < energy * lam.sum()).sum())
    w, sigma = w[:, :k], lam[:k].sqrt()
    other = ((x.T if wide else x) @ w) / sigma
    return {"out": w, "in": other} if wide else {"out": other, "in": w}


def _overlap(qa: torch.Tensor, qb: torch.Tensor) -> float:
    cos = torch.linalg.svdvals(qa.T @ qb)  # cosines of the principal angles
    return float((cos**2).sum() / min(qa.shape[1], qb.shape[1]))


@pytest.fixture(scope="module")
def stack():
    targets = doctor_targets()
    fa = factors(targets, rank=4, seed=1)
    la = lora("a", fa, alpha=2.0)
    lb = lora("b", correlated(fa, seed=2, mix=0.8), alpha=4.0)  # rank 8, shares a's directions
    lc = lora("c", factors(targets, rank=3, seed=3), alpha=None)
    ld = loha("d", [t for t in targets if "output_blocks" in t.module or "proj_in" in t.module], seed=4)
    items = [
        stack_item(la, 0.8),
        stack_item(lb, 0.5, 0.7, lbw="1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1"),
        stack_item(lc, -0.6),
        stack_item(ld, 1.2),
    ]
    return items, targets


def _brute(items, target) -> list[torch.Tensor | None]:
    out = []
    for it in items:
        if target not in it.lora.modules or it.strength_for(target) == 0:
            out.append(None)
        else:
            out.append(it.strength_for(target) * unit_delta(it.lora, target))
    return out


@pytest.fixture()
def one_thread():
    """The brute force runs dozens of SVDs of up to 640×5760: on a busy 2-core machine, threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gram_norms_cosines_and_overlaps_match_brute_force(stack, one_thread) -> None:
    items, targets = stack
    m = measure(items, FAMILY, dtype=torch.float64)
    by_target = {t.target: t for t in m.targets}
    assert set(by_target) == set(targets)
    checked_overlap = 0
    for target in targets:
        tm = by_target[target]
        deltas = _brute(items, target)
        present = [i for i, d in enumerate(deltas) if d is not None]
        assert list(tm.present) == present
        for i in present:
            for j in present:
                want = float((deltas[i] * deltas[j]).sum())
                assert tm.gram[i, j].item() == pytest.approx(want, rel=1e-9, abs=1e-12)
        total = sum(deltas[i] for i in present)
        assert tm.combined == pytest.approx(float(torch.linalg.norm(total)), rel=1e-9)
        # LoRA parts: the whole factor spaces; LoHa (dense): the dominant ones
        bases = {i: _bases(deltas[i], ENERGY_KEPT if items[i].lora.name == "d" else None) for i in present}
        for i in present:
            for j in present:
                if i == j:
                    continue
                for side, got in (("out", tm.out_overlap), ("in", tm.in_overlap)):
                    want = _overlap(bases[i][side], bases[j][side])
                    assert got[i, j].item() == pytest.approx(want, abs=1e-6)
                    checked_overlap += 1
    assert checked_overlap > 20


def test_correlated_pair_has_high_cosine_and_overlap_and_blocks_sum_their_layers(stack) -> None:
    items, _ = stack
    m = measure(items, FAMILY, dtype=torch.float64)
    blk = m.blocks["IN01"]
    assert blk.cosine()[0, 1].item() > 0.5  # a and b share directions
    assert blk.out_overlap[0, 1].item() == pytest.approx(1.0, abs=1e-9)  # a's 4 directions all lie in b's 8
    assert abs(blk.cosine()[0, 2].item()) < 0.2  # independent
    layers = [t for t in m.targets if t.block == "IN01"]
    assert torch.allclose(blk.gram, sum(t.gram for t in layers))
    assert blk.combined == pytest.approx(math.sqrt(float(sum(t.gram.sum() for t in layers))))
    assert blk.excess == pytest.approx(blk.combined / math.sqrt(float(blk.gram.diagonal().sum())))
    assert set(m.blocks) == {"BASE", "IN01", "IN04", "OUT03"}
    assert m.te is not None and m.te.targets == 2


def test_block_weights_and_te_strength_are_applied(stack) -> None:
    items, _ = stack
    m = measure(items, FAMILY, dtype=torch.float64)
    b = items[1]
    for tm in m.targets:
        t = tm.target
        want = {"BASE": 0.5, "IN01": 0.7, "IN02": 0.35}.get(block_id(t.module), 0.7)
        assert b.strength_for(t) == pytest.approx(want)
        norm = float(torch.linalg.norm(unit_delta(b.lora, t))) * want
        assert math.sqrt(tm.gram[1, 1].item()) == pytest.approx(norm, rel=1e-9)


def test_float32_batches_agree_with_float64(stack) -> None:
    items, _ = stack
    m32 = measure(items, FAMILY)
    m64 = measure(items, FAMILY, dtype=torch.float64)
    for a, b in zip(m32.targets, m64.targets):
        assert torch.allclose(a.gram, b.gram, rtol=1e-4, atol=1e-6)
        assert torch.allclose(a.out_overlap.nan_to_num(), b.out_overlap.nan_to_num(), atol=1e-4)


def test_relative_change_uses_the_base_weights(stack, tmp_path) -> None:
    items, _ = stack
    path = tmp_path / "base.safetensors"
    sd = model_and_checkpoint(path, dtype=torch.float32)
    base = BaseCheckpoint(path)
    assert base.family is FAMILY
    m = measure(items, FAMILY, base=base, dtype=torch.float64)
    for tm in m.targets:
        w0 = sd[f"{tm.target.module}.{tm.target.param}"].double()
        assert tm.base_sq == pytest.approx(float((w0**2).sum()), rel=1e-9)
        total = sum(d for d in _brute(items, tm.target) if d is not None)
        assert tm.relative == pytest.approx(float(torch.linalg.norm(total) / torch.linalg.norm(w0)), rel=1e-9)
    blk = m.blocks["OUT03"]
    base_sq = sum(tm.base_sq for tm in m.targets if tm.block == "OUT03")
    assert blk.relative == pytest.approx(blk.combined / math.sqrt(base_sq))


def test_checkpoint_that_lacks_a_changed_tensor_is_named(stack, tmp_path) -> None:
    items, _ = stack
    path = tmp_path / "base.safetensors"
    sd = model_and_checkpoint(path)
    from safetensors.torch import save_file

    missing = "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight"
    del sd[missing]
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        measure(items, FAMILY, base=BaseCheckpoint(path))
    assert missing in str(err.value) and str(path) in str(err.value)
