"""``/api/v1/tokens`` (admin): make, list and revoke tokens; ``/api/v1/me``: what the caller's token allows."""
from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import select

from lightpipe.service.api.deps import Db, Parts
from lightpipe.service.auth import Admin, CurrentUser, create_token
from lightpipe.service.db.models import Token

router = APIRouter(tags=["tokens"])


class NewToken(BaseModel):
    """A token to make: for whom, with which role, for how long, limited to which folders."""

    user: str = Field(min_length=1, max_length=200, description="The user the token acts for (made if new)")
    role: Literal["user", "admin"] = Field("user", description="admin may register templates and manage tokens")
    days: float | None = Field(None, gt=0, le=3650, description="Lifetime in days; default the service's token_days")
    label: str = Field("", max_length=200, description="What the token is for, shown in lists")
    folders: list[str] = Field(default_factory=list, max_length=100,
                               description="Folders of the data root it may read and process; empty: all")


def token_json(t: Token) -> dict[str, Any]:
    return {"id": t.id, "user": t.user.name, "role": t.role, "label": t.label, "prefix": t.prefix,
            "folders": list(t.folders), "created": t.created.isoformat(), "expires": t.expires.isoformat(),
            "revoked": t.revoked, "last_used": t.last_used.isoformat() if t.last_used else None}


@router.get("/me", summary="The caller: user, role, folders and expiry of the token, and the detector streams "
                          "users may start live jobs on")
def me(user: CurrentUser, parts: Parts) -> dict[str, Any]:
    return {"user": user.user, "role": user.role, "folders": list(user.folders), "expires": user.expires.isoformat(),
            "live_streams": list(parts.settings.live_streams)}


@router.get("/tokens", summary="Every token, without secrets (admin)")
def list_tokens(session: Db, admin: Admin) -> list[dict[str, Any]]:
    return [token_json(t) for t in session.scalars(select(Token).order_by(Token.id))]


@router.post("/tokens", status_code=201, summary="Make a token; its secret is in this answer only (admin)")
def make_token(body: NewToken, session: Db, parts: Parts, admin: Admin) -> dict[str, Any]:
    folders = parts.data.check_folders(body.folders) if body.folders else []
    token, secret = create_token(session, body.user, body.role, body.days or parts.settings.token_days, body.label,
                                 folders)
    session.commit()
    return {**token_json(token), "token": secret}


@router.delete("/tokens/{token_id}", summary="Revoke a token (admin)")
def revoke_token(token_id: int, session: Db, admin: Admin) -> dict[str, Any]:
    token = session.get(Token, token_id)
    if token is None:
        raise HTTPException(404, f"no token {token_id}")
    if token.revoked:
        raise HTTPException(409, f"token {token_id} is already revoked")
    token.revoked = True
    session.commit()
    return token_json(token)
