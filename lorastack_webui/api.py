"""The preset routes under /lorastack/…: thin FastAPI glue over ``lib_lorastack.presets.api`` (which validates every
body). With --api-auth they ask for the same HTTP Basic credentials as the WebUI's own API (routes an extension adds
are not protected unless it says so)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from lib_lorastack.presets import api as handlers


def credentials_from(api_auth: str | None) -> dict[str, str]:
    """``user:password,user2:password2`` (the WebUI's --api-auth) → {user: password}."""
    out: dict[str, str] = {}
    for pair in (api_auth or "").split(","):
        user, sep, password = pair.strip().partition(":")
        if sep and user:
            out[user] = password
    return out


def make_router(store: Callable, resolver: Callable, family: Callable, credentials: dict[str, str]) -> APIRouter:
    dependencies = []
    if credentials:
        basic = HTTPBasic()

        def check(given: HTTPBasicCredentials = Depends(basic)) -> None:  # noqa: B008 - FastAPI's idiom
            expected = credentials.get(given.username)
            if expected is None or not secrets.compare_digest(given.password.encode(), expected.encode()):
                raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

        dependencies.append(Depends(check))
    router = APIRouter(prefix="/lorastack", tags=["LoRA Stack"], dependencies=dependencies)

    async def body(request: Request):
        raw = await request.body()
        if len(raw) > handlers.MAX_BODY_CHARS:
            raise HTTPException(status_code=413, detail="request body too large")
        if not raw:
            return {}
        try:
            import json

            return json.loads(raw)
        except ValueError as e:
            raise HTTPException(status_code=400, detail=f"the body is not JSON: {e}") from None

    def reply(result) -> JSONResponse:
        status, content = result
        return JSONResponse(status_code=status, content=content)

    @router.get("/presets")
    def list_presets():
        return reply(handlers.list_presets(store()))

    @router.get("/presets/{name}")
    def get_preset(name: str):
        return reply(handlers.get_preset(store(), {"name": name}))

    @router.post("/presets")
    async def save_preset(request: Request):
        return reply(handlers.save_preset(store(), await body(request), resolver=resolver()))

    @router.delete("/presets/{name}")
    def delete_preset(name: str):
        return reply(handlers.delete_preset(store(), {"name": name}))

    @router.post("/presets/{name}/rename")
    async def rename_preset(name: str, request: Request):
        data = await body(request)
        if not isinstance(data, dict):
            return reply((400, {"error": "the body must be an object with 'new_name'"}))
        return reply(handlers.rename_preset(store(), {"name": name, "new_name": data.get("new_name")}))

    @router.post("/expand")
    async def expand(request: Request):
        return reply(handlers.expand_for_generation(store(), await body(request), resolver=resolver(), family=family()))

    @router.post("/presets/export")
    async def export(request: Request):
        return reply(handlers.export_presets(store(), await body(request)))

    @router.post("/presets/import")
    async def import_(request: Request):
        return reply(handlers.import_presets(store(), await body(request)))

    @router.get("/backup")
    def backup():
        return reply(handlers.backup_info(store()))

    @router.post("/backup/restore")
    async def restore(request: Request):
        return reply(handlers.restore_backup(store(), await body(request)))

    return router
