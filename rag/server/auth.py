"""Who may call the API: the API key as a bearer token, or a login as HTTP Basic credentials.

The check is a route dependency, not a middleware: a route declares it, and the OpenAPI
document says which schemes the server accepts."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence
from typing import Any, NamedTuple

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBasic, HTTPBearer
from fastapi.security.base import SecurityBase

from ..errors import ConfigError
from .errors import ApiError


class _Declared(SecurityBase):
    """A security scheme named in the OpenAPI document that checks nothing itself."""

    def __init__(self, scheme: HTTPBearer | HTTPBasic) -> None:
        self.model = scheme.model
        self.scheme_name = scheme.scheme_name

    async def __call__(self, request: Request) -> None:
        return None


Login = tuple[str, str]


def logins_of(login: Login | Sequence[Login] | None) -> list[Login]:
    """One (user, password) pair or several, checked: each needs both, user names distinct."""
    if not login:
        return []
    pairs = [login] if isinstance(login[0], str) else list(login)  # type: ignore[list-item]
    out: list[Login] = []
    for pair in pairs:
        user, password = pair  # type: ignore[misc]
        if not (user and password):
            raise ConfigError("the login needs a user name and a password, e.g. --auth reader:s3cret")
        if any(user == u for u, _ in out):
            raise ConfigError(f"the user {user!r} is given two logins; give each user one --auth")
        out.append((str(user), str(password)))
    return out


def user_of(request: Request) -> str:
    """Whose saved chats a request reads: its login's user ("" for the API key or no login)."""
    return str(getattr(request.state, "user", ""))


class Guards(NamedTuple):
    """The dependencies that guard a route: `guarded` on every route but /health, `locked` on
    /health and unrouted paths (the same under a login, none with only a key)."""

    guarded: list[Any]
    locked: list[Any]


def guards(key: str, logins: list[Login]) -> Guards:
    """The credential check for a server with API key `key` (empty: none) and `logins`."""
    login = logins[0] if logins else None
    challenges = [*(["Bearer"] if key else []), *(['Basic realm="rag", charset="UTF-8"'] if login else [])]

    def refuse(message: str, code: str) -> ApiError:
        headers = {"WWW-Authenticate": ", ".join(challenges)}
        return ApiError(401, message, type="authentication_error", code=code, headers=headers)

    def check_credentials(request: Request) -> None:
        # Read by hand, not by FastAPI's HTTPBasic: it answers a malformed header with its own
        # error shape and decodes only ASCII, and RFC 7617 logins are UTF-8.
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if key and scheme == "bearer":
            # Starlette reads header bytes as latin-1: compare bytes, so a UTF-8 key matches.
            if secrets.compare_digest(value.encode("latin-1"), key.encode()):
                request.state.user = ""
                return
            raise refuse("the API key is not the one this server was started with", "invalid_api_key")
        if login and scheme == "basic":
            try:
                user, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8
                user, sep, password = "", "", ""
            if not sep:
                raise refuse("the login is not HTTP Basic: send base64 of USER:PASSWORD", "invalid_login")
            # Every pair compared, both halves, always: the time taken says nothing about
            # which user exists or which half was wrong.
            ok = False
            for name, secret in logins:
                name_ok = secrets.compare_digest(user.encode(), name.encode())
                password_ok = secrets.compare_digest(password.encode(), secret.encode())
                ok |= name_ok and password_ok
            if ok:
                request.state.user = user
                return
            raise refuse("wrong user name or password", "invalid_login")
        if not login:
            raise refuse("this server needs an API key: send `Authorization: Bearer KEY`", "missing_api_key")
        wanted = "the API key as `Authorization: Bearer KEY` or " if key else ""
        raise refuse(
            f"this server needs a login: send {wanted}its user and password as HTTP Basic", "missing_login"
        )

    # The schemes are declared so that the document says what this server accepts (either one);
    # check_credentials does the checking.
    schemes: list[Any] = [
        *([_Declared(HTTPBearer(description="The key given to `rag serve --api-key`."))] if key else []),
        *([_Declared(HTTPBasic(description="The login given to `rag serve --auth`."))] if login else []),
    ]
    guarded = [Depends(check_credentials), *(Security(s) for s in schemes)] if schemes else []
    # A server with a login says nothing without it, /health included; with only a key,
    # /health stays open to probes.
    locked = guarded if login else []
    return Guards(guarded, locked)
