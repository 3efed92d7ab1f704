"""The browser-side tag tools (javascript/lorastack-tags.js): their node tests, and agreement with the Python side
on random prompts (the same removals; a Ctrl+Up/Down read back by ``parse_prompt`` moves exactly the strengths)."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lib_lorastack.syntax import find_lora_tags, remove_lora_tags
from lib_lorastack.syntax.tags import LORA_TAGS, find_tags

ROOT = Path(__file__).resolve().parent.parent
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not on PATH: the JavaScript tag tools are not tested")


@needs_node
def test_node_suite_passes() -> None:
    done = subprocess.run(
        [NODE, "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    ran = re.search(r"^# tests (\d+)$", output, re.M)
    assert ran and int(ran.group(1)) > 0, f"node ran no tests (file names must match *.test.mjs):\n{output[-2000:]}"
    assert re.search(r"^# fail 0$", output, re.M), output[-6000:]


def run_js(ops: list[dict]) -> list:
    done = subprocess.run(
        [NODE, "tests/js/parity.cjs"], cwd=ROOT, input=json.dumps(ops), capture_output=True, text=True,
        timeout=120, check=False, encoding="utf-8",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


FILLER = ["a", "1girl", " ", ", ", ",", "\n", "(", ")", "[", "]", ":1.2", "BREAK", " BREAK ", "|", "{", "}", "é",
          "キャラ", "red hair", "\t", "  ", "<hypernet:h:1>", "x", "<", ">", ":", "²", "e\u0301", "<w:", "\u3000"]  # fmt: skip
NAMES = ["a", "b", "キャラ", "my lora v1.5", " sp "]
FORMS = ["{n}", "{n}:0.7", "{n}:0.7:0.3", "{n}:0.7:0.3:16", "{n}:0.5:te=1", "{n}:0.5:unet=0.2", "{n}:1:dyn=8",
         "{n}:1:lbw=OUTALL", "{n}:1:w=INS:hr=0", "{n}:1:lbwe=ATTNDEEPOFF:x=0.3", "{n}:1:step=5-20", "{n}:1:OUTALL",
         "{n}:0.8:OUTS:0.5", "{n}:1:foo=2", "{n}:-1.5", "{n}:bad", "{n}: 0.25 :te= -1", "{n}:te=0.3:unet=0.9",
         "{n}:0.5:0.6:te=0.1", "{n}:1e-2", "{n}:1:1:4:7"]  # fmt: skip


def random_prompts(count: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        pieces = ["".join(rng.choices(FILLER, k=rng.randint(0, 4)))]
        for _ in range(rng.randint(0, 4)):
            kind = rng.choice(["lora", "lyco"])
            pieces.append(f"<{kind}:{rng.choice(FORMS).format(n=rng.choice(NAMES))}>")
            pieces.append("".join(rng.choices(FILLER, k=rng.randint(0, 4))))
        prompts.append("".join(pieces))
    return prompts


def utf16_index(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le")) // 2


@needs_node
def test_js_and_python_find_and_remove_the_same_tags() -> None:
    prompts = random_prompts(1500)
    ops = [{"op": "names", "text": p} for p in prompts]
    ops += [{"op": "remove", "text": p, "name": n} for p in prompts for n in NAMES[:3]]
    results = run_js(ops)
    names, removed = results[: len(prompts)], results[len(prompts) :]
    for prompt, js_names in zip(prompts, names):
        assert js_names == [t.name for t in find_lora_tags(prompt)], prompt
    for op, js_text in zip(ops[len(prompts) :], removed):
        assert js_text == remove_lora_tags(op["text"], op["name"]).text, op


@needs_node
def test_js_step_moves_exactly_the_strengths_python_reads() -> None:
    rng = random.Random(7)
    ops, expected = [], []
    for prompt in random_prompts(600, seed=3):
        for tag in find_lora_tags(prompt):
            start, end = tag.span
            position = rng.randint(start + 1, end - 1)
            delta = rng.choice([0.05, -0.05, 0.1, -0.25, 0.01])
            ops.append({"op": "step", "text": prompt, "position": utf16_index(prompt, position), "delta": delta})
            expected.append((prompt, tag, delta))
        # positions outside every LoRA tag (tags without a name included: the JS claims those)
        lora_spans = [t.span for t in find_tags(prompt) if t.kind in LORA_TAGS]
        outside = [i for i in range(len(prompt) + 1) if not any(s < i < e for s, e in lora_spans)]
        for i in rng.sample(outside, min(2, len(outside))):
            ops.append({"op": "step", "text": prompt, "position": utf16_index(prompt, i), "delta": 0.1})
            expected.append((prompt, None, 0.1))
    results = run_js(ops)
    stepped = 0
    for (prompt, tag, delta), result in zip(expected, results):
        if tag is None:
            assert result is None, prompt
            continue
        assert result is not None, (prompt, tag.span)
        after = find_lora_tags(result["text"])
        assert len(after) == len(find_lora_tags(prompt))
        if tag.entry is None or not result["changed"]:
            assert result["text"] == prompt and tag.entry is None, (prompt, tag)
            continue
        stepped += 1
        new = next(t for t in after if t.span[0] == tag.span[0]).entry
        assert new is not None, result["text"]
        assert new.te == pytest.approx(tag.entry.te + delta, abs=1e-9), (prompt, result["text"])
        assert new.unet == pytest.approx(tag.entry.unet + delta, abs=1e-9), (prompt, result["text"])
        rest = ("name", "dyn", "lbw", "lbwe", "x", "start", "stop")
        assert [getattr(new, k) for k in rest] == [getattr(tag.entry, k) for k in rest], result["text"]
        # the text outside the tag is untouched
        assert result["text"][: tag.span[0]] == prompt[: tag.span[0]]
        assert result["text"].endswith(prompt[tag.span[1] :])
    assert stepped > 500
