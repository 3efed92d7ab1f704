"""The stack state across jobs (host-free): what each activation applies, reports and writes into the infotext."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lib_lorastack.formats.hashes import compute_hashes
from lib_lorastack.host import STACK_FIELD, read_options
from lib_lorastack.host.infotext import parse_stack_value
from tests.helpers.engine_fixtures import same_bits, snapshot
from tests.helpers.host_fixtures import Options, lora_folder, make_session, model_handle


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return lora_folder(tmp_path)


def test_jobs_apply_repeat_change_and_clear(folder: Path) -> None:
    session, _ = make_session(folder)
    model, handle = model_handle()
    base = snapshot(model)
    first = session.activate(handle, [["char", "0.8"], ["Watercolor", "0.5", "0.3"]])
    assert not first.messages and first.changed and first.report.layers_written > 0
    assert [u.mentioned for u in first.uses] == ["char", "Watercolor"]
    assert first.uses[1].file == "style"
    applied = snapshot(model)
    again = session.activate(handle, [["char", "0.8"], ["Watercolor", "0.5", "0.3"]])
    assert again.report.weight_writes == 0 and not again.changed and again.console_line() is None
    changed = session.activate(handle, [["char", "0.8"], ["Watercolor", "0.9"]])
    assert changed.report.weight_writes > 0
    cleared = session.activate(handle, [])
    assert cleared.report.layers_restored > 0 and "no LoRA" in cleared.console_line()
    assert same_bits(snapshot(model), base)
    session.activate(handle, [["char", "0.8"], ["Watercolor", "0.5", "0.3"]])
    assert same_bits(snapshot(model), applied)  # the same stack gives the same bits whatever came before
    session.release(handle.key)
    assert same_bits(snapshot(model), base)


def test_bad_tags_unknown_and_broken_loras_are_named_and_the_rest_applies(folder: Path) -> None:
    session, _ = make_session(folder)
    _model, handle = model_handle()
    act = session.activate(handle, [["char", "0.8x"], ["chr", "1"], ["broken", "1"], ["xl_only", "1"], ["detail", "0.7"]])
    text = "\n".join(act.messages)
    assert "<lora:char:0.8x>" in text and "not a number" in text
    assert "'chr'" in text and "did you mean" in text and "'char'" in text
    assert "broken" in text and "xl_only" in text
    assert [u.mentioned for u in act.uses] == ["detail"]
    assert act.report.layers_written > 0
    session.release(handle.key)


def test_infotext_fields(folder: Path) -> None:
    session, _ = make_session(folder)
    _model, handle = model_handle()
    act = session.activate(handle, [["char", "0.8"], ["Watercolor", "1", "0.5", "lbw=OUTALL"], ["detail", "1", "start=2", "stop=5"]])
    short = {n: compute_hashes(folder / f"{n}.safetensors").short for n in ("char", "style", "detail")}
    assert act.lora_hashes() == f"char: {short['char']}, Watercolor: {short['style']}, detail: {short['detail']}"
    records, problems = parse_stack_value(act.stack_field())
    assert not problems
    assert [(r.entry.name, r.short_hash) for r in records] == [("char", short["char"]), ("Watercolor", short["style"]), ("detail", short["detail"])]
    assert records[1].entry.unet == 0.5 and records[1].entry.lbw.startswith("1,0,0,0")  # resolved vector, not the preset name
    assert (records[2].entry.start, records[2].entry.stop) == (2, 5)
    assert STACK_FIELD == "LoRA stack"
    session.release(handle.key)


def test_schedules_switch_at_steps_and_do_not_leak_into_the_next_job(folder: Path) -> None:
    session, _ = make_session(folder)
    model, handle = model_handle()
    session.activate(handle, [["char", "1"], ["detail", "1", "start=3", "stop=5"]])
    before = snapshot(model)
    assert session.set_step(handle.key, 1).weight_writes == 0  # the 2nd step (the sampler counts from 0)
    entering = session.set_step(handle.key, 2)  # the 3rd step: start=3 joins here
    assert entering.weight_writes > 0
    session.set_step(handle.key, 3)
    # the next job starts at its first step again, whatever step the last one ended on
    session.activate(handle, [["char", "1"], ["detail", "1", "start=3", "stop=5"]])
    assert same_bits(snapshot(model), before)
    plain = session.activate(handle, [["char", "1"]])
    assert session.set_step(handle.key, 3) is None  # no schedule: nothing runs per step
    assert plain.report is not None
    session.release(handle.key)


def test_changed_settings_rebuild_the_engine_after_restoring(folder: Path) -> None:
    options = Options(mode="fused")
    session, _ = make_session(folder, options)
    model, handle = model_handle()
    base = snapshot(model)
    session.activate(handle, [["char", "1"]])
    options.value = read_options({"lorastack_mode": "online"}.get)[0]
    act = session.activate(handle, [["char", "1"]])
    assert act.report.online_params > 0 and act.report.fused_params == 0
    assert same_bits(snapshot(model), base)  # online: no weight written, the fused patches were restored first
    session.clear()
    assert all("forward" not in m.__dict__ for m in handle.modules.values())


def test_a_failing_lora_is_left_out_and_the_model_is_never_half_patched(folder: Path, monkeypatch) -> None:
    session, _ = make_session(folder)
    model, handle = model_handle()
    base = snapshot(model)
    session.activate(handle, [["detail", "1"]])
    engine = session.engine(handle.key)
    real = engine.program

    def failing(plan, param):
        if any(c.lora.name == "char" for c in plan.contributions):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(plan, param)

    monkeypatch.setattr(engine, "program", failing)
    act = session.activate(handle, [["char", "1"], ["detail", "0.5"]])
    assert any("char" in m and "out of memory" in m for m in act.messages)
    assert [u.mentioned for u in act.uses] == ["detail"]
    monkeypatch.undo()
    session.activate(handle, [])
    assert same_bits(snapshot(model), base)


def test_read_options_falls_back_with_a_message() -> None:
    options, problems = read_options({"lorastack_mode": "turbo", "lorastack_cache_mib": "lots", "lorastack_takeover": 0}.get)
    assert options.mode == "auto" and options.cache_mib == 2048 and options.takeover is True
    assert len(problems) == 3 and any("turbo" in p for p in problems)
    assert read_options({"lorastack_backups": "gpu"}.get)[0].engine_backups == "device"


def test_fp16_model_is_restored_bit_for_bit(folder: Path) -> None:
    session, _ = make_session(folder)
    model, handle = model_handle(torch.float16)
    base = snapshot(model)
    for tags in ([["char", "0.7"]], [["char", "0.2"], ["detail", "1.3"]], [["Watercolor", "-0.5"]], []):
        session.activate(handle, tags)
    assert same_bits(snapshot(model), base)
