"""``python -m lib_lorastack preset …`` through tools.cli.main."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lib_lorastack.formats.hashes import compute_hashes
from lib_lorastack.presets.store import PresetStore
from lib_lorastack.tools.cli import main
from tests.helpers.preset_fixtures import tiny_lora


@pytest.fixture
def env(tmp_path: Path, monkeypatch) -> dict[str, Path]:
    loras = tmp_path / "Lora"
    tiny_lora(loras / "alice_v2.safetensors", alias="Alice", seed=1)
    tiny_lora(loras / "style.safetensors", seed=2)
    store = tmp_path / "store" / "presets.json"
    monkeypatch.setenv("LORASTACK_PRESETS", str(store))  # the default store
    return {"loras": loras, "store": store, "tmp": tmp_path}


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["preset", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_brand_stack_walk_through(env, capsys) -> None:
    code, out, err = run(
        capsys, "save", "brand", "--prompt", "<lora:Alice:0.8> <lora:style:0.5:lbw=OUTALL> lsx_girl, red scarf",
        "--negative", "blurry", "--description", "Brand A", "--family", "sd1", "--lora-dir", str(env["loras"]),
    )  # fmt: skip
    assert code == 0 and "saved 'brand': 2 LoRA(s)" in out and err == ""
    stored = PresetStore(env["store"]).get("brand")
    assert stored.entries[0].sha256 == compute_hashes(env["loras"] / "alice_v2.safetensors").sha256
    assert stored.entries[1].lbw == "OUTALL" and stored.family == "sd1" and stored.negative_triggers == "blurry"

    code, out, _ = run(capsys, "list")
    assert code == 0 and out.startswith("brand [sd1]: Alice, style — Brand A")
    code, out, _ = run(capsys, "show", "brand")
    assert code == 0 and "<lora:Alice:0.8>" in out and "sha256" in out and "triggers: lsx_girl, red scarf" in out
    code, out, _ = run(capsys, "show", "brand", "--json")
    assert json.loads(out)["description"] == "Brand A"

    code, out, _ = run(capsys, "save", "brand", "--prompt", "<lora:Alice:1>")
    assert code == 1
    assert run(capsys, "save", "brand", "--prompt", "<lora:Alice:0.9> x", "--overwrite")[0] == 0
    assert PresetStore(env["store"]).get("brand").entries[0].te == 0.9

    (env["loras"] / "alice_v2.safetensors").rename(env["loras"] / "renamed.safetensors")
    code, out, err = run(capsys, "expand", "a photo of <lorastack:brand:0.5>", "--triggers", "--lora-dir", str(env["loras"]))
    assert code == 0 and out.strip() == "a photo of <lora:Alice:0.45> x"
    code, out, err = run(capsys, "expand", "<lorastack:brnad>")
    assert code == 1 and "did you mean 'brand'" in err


def test_save_warns_about_missing_files(env, capsys) -> None:
    code, _, err = run(capsys, "save", "b", "--prompt", "<lora:nope:1>", "--lora-dir", str(env["loras"]))
    assert code == 0 and "LoRA not found: 'nope'" in err and "saved by name only" in err
    assert run(capsys, "save", "c", "--prompt", "no tags")[0] == 1
    assert run(capsys, "save", "../evil", "--prompt", "<lora:a:1>")[0] == 1
    code, _, err = run(capsys, "save", "d", "--prompt", "<lora:a:1>", "--lora-dir", str(env["tmp"] / "none"))
    assert code == 1 and "not a folder" in err


def test_export_import_delete(env, capsys) -> None:
    code, _, err = run(capsys, "save", "one", "--prompt", "<lora:one:0.5:lbw=MINE>")
    assert code == 0 and "unknown block-weight preset 'MINE'" in err
    lbw = env["tmp"] / "lbwpresets.txt"
    lbw.write_text("MINE:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1\nBAD:1,2\n")
    code, out, err = run(capsys, "import", "--lbw", str(lbw))
    assert code == 0 and "block presets: MINE" in out and "line 2" in err
    assert run(capsys, "save", "two", "--prompt", "<lora:two:0.5:lbw=MINE>") == (0, f"saved 'two': 1 LoRA(s) in {env['store']}\n", "")
    shared = env["tmp"] / "shared.json"
    code, out, _ = run(capsys, "export", "one", "two", "-o", str(shared))
    assert code == 0 and json.loads(shared.read_text())["block_presets"] == {"MINE": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"}

    colleague = str(env["tmp"] / "colleague.json")
    code, out, _ = run(capsys, "import", str(shared), "--store", colleague)
    assert code == 0 and "added 2: one, two" in out
    assert run(capsys, "save", "one", "--prompt", "<lora:x:1>", "--store", colleague, "--overwrite")[0] == 0
    code, _, err = run(capsys, "import", str(shared), "--store", colleague)
    assert code == 1 and "already present with other content: one" in err
    code, out, _ = run(capsys, "import", str(shared), "--store", colleague, "--rename-on-conflict")
    assert code == 0 and "'one' imported as 'one (2)'" in out
    code, out, _ = run(capsys, "import", str(shared), "--store", colleague, "--overwrite")
    assert code == 0 and "replaced 1: one" in out
    assert sorted(PresetStore(colleague).load().presets) == ["one", "one (2)", "two"]

    shared.write_text(shared.read_text().replace('"te": 0.5', '"te": "0.5"', 1))
    code, _, err = run(capsys, "import", str(shared), "--store", colleague)
    assert code == 1 and "presets[0] 'one'.entries[0].te: must be a number" in err

    assert run(capsys, "delete", "one", "two")[0] == 0
    code, _, err = run(capsys, "delete", "one")
    assert code == 1 and "no preset named 'one'" in err


def test_import_styles(env, capsys) -> None:
    styles = env["tmp"] / "styles.csv"
    styles.write_text(
        'name,prompt,negative_prompt\n"Brand A","<lora:Alice:0.8> <lora:style:0.6> lsx_girl, {prompt}","blurry"\n'
        'plain,"masterpiece",""\n', "utf-8-sig",
    )  # fmt: skip
    code, out, _ = run(capsys, "import", "--styles", str(styles), "--lora-dir", str(env["loras"]))
    assert code == 0 and "added 1: Brand A" in out
    preset = PresetStore(env["store"]).get("Brand A")
    assert preset.triggers == "lsx_girl" and preset.negative_triggers == "blurry" and preset.entries[1].sha256
    assert run(capsys, "import", "--styles", str(styles), "--lbw", str(styles))[0] == 1


def test_broken_store_restore_and_reset(env, capsys) -> None:
    run(capsys, "save", "a", "--prompt", "<lora:x:1>")
    run(capsys, "save", "b", "--prompt", "<lora:x:1>")
    env["store"].write_text('{"version": 1, "presets": [\n{]}')
    code, _, err = run(capsys, "list")
    assert code == 1 and str(env["store"]) in err and "line 2, column 2" in err and ".bak" in err
    assert run(capsys, "save", "c", "--prompt", "<lora:x:1>")[0] == 1
    code, out, _ = run(capsys, "restore")
    assert code == 0 and "kept as" in out
    code, out, _ = run(capsys, "list")
    assert code == 0 and out.startswith("a:")
    assert run(capsys, "reset")[0] == 1  # needs --yes
    code, out, _ = run(capsys, "reset", "--yes")
    assert code == 0 and "kept as" in out
    assert run(capsys, "list")[1].startswith("no presets")


def test_usage_errors(capsys) -> None:
    assert main(["preset"]) == 2
    assert main(["preset", "frobnicate"]) == 2
    assert main(["preset", "export", "x"]) == 2  # -o is required
    assert main(["preset", "--help"]) == 0
    capsys.readouterr()
    assert main(["--help"]) == 0 and "preset" in capsys.readouterr().out
