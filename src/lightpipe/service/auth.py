"""API tokens: made once, stored only as a SHA-256 digest, with a role, an expiry and folder limits.

A request carries its token as ``Authorization: Bearer <token>``. The
dependencies :func:`current_user` (any valid token) and :func:`require_admin`
(a token of the ``admin`` role) turn it into a :class:`Principal`, or refuse
the request: 401 for a missing, unknown, revoked or expired token, 403 for
the wrong role. A token limited to folders of the data root carries them in
:attr:`Principal.folders`; every path the service resolves for it stays inside.

The secret is 32 random bytes, so one SHA-256 of it is as good as a slow hash
(nobody can guess their way through 2**256 secrets); it is compared only
through its digest, and never stored, logged or put in a URL.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from lightpipe.service.db.models import ROLES, Token, User, utcnow
from lightpipe.service.db.session import transaction

TOKEN_PREFIX = "lp_"
#: Seconds between two updates of a token's ``last_used`` (a write per request would cost every read).
LAST_USED_EVERY_S = 60.0


@dataclass(frozen=True)
class Principal:
    """Who a request is from: the token's user, role and folder limits."""

    user_id: int
    user: str
    role: str
    token_id: int
    expires: datetime
    folders: tuple[str, ...] = field(default=())

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def digest(secret: str) -> str:
    """The stored form of a token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(session: Session, user: str, role: str = "user", days: float = 90.0, label: str = "",
                 folders: tuple[str, ...] | list[str] = ()) -> tuple[Token, str]:
    """Make a token for ``user`` (created if new); returns the row and the secret, which is not kept anywhere.

    Raises
    ------
    ValueError
        For an unknown role, a lifetime that is not positive, or an empty user name.
    """
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; a token is one of {', '.join(ROLES)}")
    if not days > 0:
        raise ValueError(f"a token's lifetime must be more than 0 days, got {days}")
    if not user.strip():
        raise ValueError("a token needs a user name")
    owner = session.scalar(select(User).where(User.name == user))
    if owner is None:
        owner = User(name=user)
        session.add(owner)
        session.flush()
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = Token(user_id=owner.id, digest=digest(secret), prefix=secret[:10], label=label, role=role,
                  folders=[f.strip("/") for f in folders], expires=utcnow() + timedelta(days=days), revoked=False)
    session.add(token)
    session.flush()
    return token, secret


def authenticate(factory: sessionmaker[Session], header: str | None) -> Principal:
    """The :class:`Principal` of an ``Authorization`` header, or ``HTTPException(401)`` saying what is wrong."""
    if not header:
        raise _unauthorized("no token: send it as the header 'Authorization: Bearer <token>'; an admin makes "
                            "tokens with `lightpipe token create`")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise _unauthorized("the Authorization header must read 'Bearer <token>'")
    return principal_of(factory, secret.strip())


def principal_of(factory: sessionmaker[Session], secret: str) -> Principal:
    """The :class:`Principal` of a token's secret, or ``HTTPException(401)``."""
    with transaction(factory) as session:
        token = session.scalar(select(Token).where(Token.digest == digest(secret)))
        if token is None:
            raise _unauthorized("unknown token; check that it was copied whole, or ask an admin for a new one")
        if token.revoked:
            raise _unauthorized("this token was revoked; ask an admin for a new one")
        now = utcnow()
        if token.expires <= now:
            raise _unauthorized(f"this token expired on {token.expires:%Y-%m-%d %H:%M} UTC; ask an admin for a new one")
        if token.last_used is None or (now - token.last_used).total_seconds() > LAST_USED_EVERY_S:
            token.last_used = now
        return Principal(token.user_id, token.user.name, token.role, token.id, token.expires, tuple(token.folders))


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


#: The scheme as OpenAPI shows it (the /docs page's "Authorize" button); the checks are :func:`authenticate`'s.
bearer = HTTPBearer(auto_error=False, description="A lightpipe token: `lightpipe token create` makes one")


def current_user(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Principal:
    """FastAPI dependency: the request's :class:`Principal` (401 without a valid token)."""
    return authenticate(request.app.state.sessions, request.headers.get("authorization"))


def require_admin(principal: Annotated[Principal, Depends(current_user)]) -> Principal:
    """FastAPI dependency: the request's :class:`Principal`, which must hold the admin role (403 otherwise)."""
    if not principal.is_admin:
        raise HTTPException(403, f"this needs an admin token; {principal.user}'s token has the {principal.role} role")
    return principal


CurrentUser = Annotated[Principal, Depends(current_user)]
Admin = Annotated[Principal, Depends(require_admin)]
