"""The preset routes (/lorastack/…) with FastAPI 0.94 (the WebUI's pin), with and without --api-auth. Runs in
.venv-ui, which has FastAPI; elsewhere it is skipped unless LORASTACK_UI_TESTS=1."""

from __future__ import annotations

import base64
import os

import pytest

if os.environ.get("LORASTACK_UI_TESTS") != "1":
    pytest.importorskip("fastapi", reason="the route tests run in .venv-ui (bash run.sh test)")
    pytest.importorskip("httpx", reason="the route tests run in .venv-ui (bash run.sh test)")

from fastapi import FastAPI
from fastapi.testclient import TestClient

from lib_lorastack.presets.store import PresetStore
from lorastack_webui.api import credentials_from, make_router


def client(tmp_path, api_auth: str | None = None) -> TestClient:
    store = PresetStore(tmp_path / "presets.json")
    app = FastAPI()
    app.include_router(make_router(lambda: store, lambda: None, lambda: "sd1", credentials_from(api_auth)))
    return TestClient(app)


def test_routes_round_trip(tmp_path) -> None:
    c = client(tmp_path)
    assert c.get("/lorastack/presets").json() == {"presets": [], "block_presets": {}}
    r = c.post("/lorastack/presets", json={"name": "brand", "prompt": "<lora:char:0.8> <lora:style:0.5> lsx_girl"})
    assert r.status_code == 201, r.text
    got = c.get("/lorastack/presets/brand").json()["preset"]
    assert [e["name"] for e in got["entries"]] == ["char", "style"] and got["triggers"] == "lsx_girl"
    r = c.post("/lorastack/expand", json={"prompt": "a cat <lorastack:brand:0.5>", "add_triggers": True})
    assert r.status_code == 200 and r.json()["prompt"].startswith("a cat <lora:char:0.4> <lora:style:0.25>")
    assert c.post("/lorastack/presets/brand/rename", json={"new_name": "brand2"}).status_code == 200
    assert c.delete("/lorastack/presets/brand2").status_code == 200
    missing = c.get("/lorastack/presets/brand2")
    assert missing.status_code == 404 and "brand2" in missing.json()["error"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "needle"),
    [
        ("post", "/lorastack/presets", {"name": "../x", "prompt": "<lora:a:1>"}, 400, "name"),
        ("post", "/lorastack/presets", {"name": "ok", "prompt": "no tags"}, 400, "no usable"),
        ("post", "/lorastack/presets", {"name": "ok", "prompt": "<lora:a:1>", "colour": 1}, 400, "colour"),
        ("post", "/lorastack/presets", [1, 2], 400, "object"),
        ("post", "/lorastack/expand", {"prompt": 5}, 400, "prompt"),
        ("post", "/lorastack/presets/none/rename", {"new_name": "x"}, 404, "none"),
    ],
)
def test_malformed_requests_get_a_named_error(tmp_path, method, path, body, status, needle) -> None:
    r = getattr(client(tmp_path), method)(path, json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_a_body_that_is_not_json(tmp_path) -> None:
    r = client(tmp_path).post("/lorastack/presets", content=b"{nope", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.text


def test_api_auth_protects_the_routes(tmp_path) -> None:
    c = client(tmp_path, "alice:secret,bob:hunter2")
    assert c.get("/lorastack/presets").status_code == 401
    wrong = base64.b64encode(b"alice:nope").decode()
    assert c.get("/lorastack/presets", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    good = base64.b64encode(b"bob:hunter2").decode()
    assert c.get("/lorastack/presets", headers={"Authorization": f"Basic {good}"}).status_code == 200
