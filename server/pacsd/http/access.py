"""Who may do what over HTTP: the requester's identity and the `http.rules` that decide.

Every route that reads or changes the archive is wrapped by `guarded(permission, endpoint)`;
the permissions are `read` (QIDO-RS, WADO-RS, the admin API's lists, the web page), `upload`
(STOW-RS), `delete` (the admin API's deletions) and `admin` (associations, queues, statistics).
A requester is anonymous, or a user verified by HTTP basic authentication against
`identity.users` (the same password hashes as DICOM user identity negotiation) or by a bearer
JSON Web Token against `identity.jwt`. A request is allowed when any rule that matches it (its
users and address) allows the permission; else it is answered 401 with a challenge when it
came without credentials and a rule would allow an authenticated user, and 403 otherwise. Wrong
credentials are always 401: they never fall back to anonymous rights.

Password hashes cost about 0.1 s of a core (argon2), and a browser or a DICOMweb viewer sends
its credentials with every request: a verified Authorization header is remembered for
`VERIFIED_TTL_S` (by an HMAC of the header under a key made at start, never the header itself).
The identity verifier is the reloadable one of the DICOM policy (SIGHUP changes both).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from pacsd.logs import get_logger
from pacsd.policy.engine import address_fits, fits
from pacsd.policy.identity import IdentityVerifier
from pacsd.settings import HttpPermission, HttpRule

log = get_logger("pacsd.http")
VERIFIED_TTL_S = 300.0
VERIFIED_MAX = 1024  # remembered Authorization headers (least recently used go first)
DECISIONS_MAX = 4096  # remembered rule decisions (address, user, permission); then forgotten
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Requester:
    """Who sent a request: the client's address and the verified user (None: anonymous)."""

    address: str
    username: str | None = None
    method: str = "anonymous"  # anonymous, basic or bearer


class Access:
    """The HTTP rules and the verifier of credentials, for one process."""

    def __init__(
        self,
        rules: Sequence[HttpRule],
        identity: Callable[[], IdentityVerifier],
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.rules = tuple(rules)
        self.identity = identity
        # Password checks: bounded like the DICOM side's (policy/identity.py holds at most 2).
        self.pool = pool or ThreadPoolExecutor(2, thread_name_prefix="pacsd-http-auth")
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, tuple[Requester, float]] = OrderedDict()
        self._decisions: dict[tuple[str, str | None, str], bool] = {}

    async def authorize(self, request: Request, permission: HttpPermission) -> Requester:
        """The requester, when a rule allows it `permission`; else HTTPException 401 or 403."""
        address = request.client.host if request.client else ""
        header = request.headers.get("authorization")
        requester = Requester(address) if header is None else await self._verify(header, address)
        if self._allowed(requester, permission):
            return requester
        if requester.username is None and any(
            permission in rule.allow and rule.users is not None for rule in self.rules
        ):
            raise HTTPException(401, f"{permission} needs a user", self._challenge())
        log.info(
            "http request refused",
            permission=permission,
            path=request.url.path,
            user=requester.username,
            address=address,
        )
        raise HTTPException(403, f"no http rule allows {permission} to this requester")

    def _allowed(self, requester: Requester, permission: HttpPermission) -> bool:
        """Whether a rule allows `permission` to `requester`; remembered per address, user and
        permission (the rules do not change while this Access lives; parsing addresses and
        networks for every request of a viewer was a measurable share of a small WADO-RS)."""
        key = (requester.address, requester.username, permission)
        allowed = self._decisions.get(key)
        if allowed is None:
            allowed = any(
                permission in rule.allow and _matches(rule, requester) for rule in self.rules
            )
            if len(self._decisions) >= DECISIONS_MAX:
                self._decisions.clear()
            self._decisions[key] = allowed
        return allowed

    def _challenge(self) -> dict[str, str]:
        schemes = ['Basic realm="pacsd", charset="UTF-8"']
        if self.identity().jwt is not None:
            schemes.append('Bearer realm="pacsd"')
        return {"WWW-Authenticate": ", ".join(schemes)}

    async def _verify(self, header: str, address: str) -> Requester:
        digest = hmac.new(self._key, header.encode("utf-8", "surrogateescape"), hashlib.sha256)
        key = digest.digest()
        remembered = self._verified.get(key)
        now = time.monotonic()
        if remembered is not None and remembered[1] > now:
            self._verified.move_to_end(key)
            return Requester(address, remembered[0].username, remembered[0].method)
        scheme, _, credentials = header.strip().partition(" ")
        verifier = self.identity()
        loop = asyncio.get_running_loop()
        if scheme.lower() == "basic":
            username, reason = await loop.run_in_executor(
                self.pool, _check_basic, verifier, credentials.strip()
            )
            method = "basic"
        elif scheme.lower() == "bearer" and verifier.jwt is not None:
            username, reason = verifier.jwt.verify(credentials.strip().encode("ascii", "replace"))
            method = "bearer"
        else:
            username, reason, method = None, f"{scheme or 'empty'} authorization not supported", ""
        if username is None:
            log.info("http credentials refused", reason=reason, address=address, scheme=method)
            raise HTTPException(401, f"credentials refused: {reason}", self._challenge())
        requester = Requester(address, username, method)
        self._verified[key] = (requester, now + VERIFIED_TTL_S)
        while len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return requester

    def close(self) -> None:
        """Release the password checks' threads."""
        self.pool.shutdown(wait=False, cancel_futures=True)


def _check_basic(verifier: IdentityVerifier, credentials: str) -> tuple[str | None, str]:
    """(username, "") when the basic credentials fit a configured user, else (None, why)."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, "malformed basic credentials"
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        return None, "malformed basic credentials"
    if not verifier.users:
        return None, "no users are configured"
    return verifier.check_password(username, password.encode("utf-8"))


def _matches(rule: HttpRule, requester: Requester) -> bool:
    if rule.users is not None and not fits(requester.username, rule.users):
        return False
    return rule.address is None or (
        bool(requester.address) and address_fits(requester.address, rule.address)
    )


def guarded(permission: HttpPermission, endpoint: Endpoint) -> Endpoint:
    """`endpoint`, answered only when the app's Access allows `permission`; the requester is
    in `request.state.requester`."""

    async def checked(request: Request) -> Response:
        access: Access = request.app.state.access
        request.state.requester = await access.authorize(request, permission)
        return await endpoint(request)

    checked.__name__ = getattr(endpoint, "__name__", "endpoint")
    checked.__doc__ = endpoint.__doc__
    return checked
