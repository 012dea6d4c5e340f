"""``POST /admin/reload``: look the followed alias up now (bearer token ``serve.admin_token``)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from mnistops.serve.state import State

router = APIRouter()


@router.post("/admin/reload")
async def admin_reload(request: Request, s: State) -> Any:
    """Switch to the version the alias names now; 403 without the token (or with none set)."""
    if not s.cfg.admin_token:
        return JSONResponse({"detail": "admin endpoints are disabled: set serve.admin_token"}, status_code=403)
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {s.cfg.admin_token}".encode()):
        return JSONResponse({"detail": "a valid bearer token is required"}, status_code=403)
    try:
        changed = await s.reload()
    except Exception as exc:
        return JSONResponse({"detail": f"could not load {s.uri}: {exc}"}, status_code=503)
    current = s.holder.current
    return {"changed": changed, "version": current.version if current else None}
