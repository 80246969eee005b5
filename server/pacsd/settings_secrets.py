"""Keeping the configuration's secrets out of messages, log lines and `pacsd config show`.

The secret-bearing settings: the password in `database.url`; `identity.users[].password_hash`
(an offline guess at a password starts from it; a plain password put there by mistake is worse);
and the values behind `network.tls.key_password_env` / `key_password_file` and
`identity.jwt.secret_env`, which the configuration only names (an environment variable, a
file) and which pacsd reads but never prints. A setting's value is never shown in an error
when its key path is under `identity` or names a password, secret or token, and a URL's
password is masked wherever a value is shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

MASK = "***"
# scheme://user:password@rest, the password up to the last "@" (an unencoded "@" in it still
# counts as the password's).
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:@/]*):(?P<password>.*)@")
_SECRET_WORDS = ("password", "secret", "token")
_SECRET_SECTIONS = ("identity",)


def mask_url(url: str) -> str:
    """`url` with the password of its user information replaced by ***; never raises."""
    return _URL_PASSWORD.sub(lambda found: f"{found['head']}:{MASK}@", url, count=1)


def is_secret_location(location: Sequence[str | int]) -> bool:
    """Whether the value at this key path may be a secret (never shown in a message)."""
    parts = [str(part).lower() for part in location]
    if parts and parts[0] in _SECRET_SECTIONS:
        return True
    return any(word in part for part in parts for word in _SECRET_WORDS)


def masked_value(value: object) -> object:
    """A value as an error message may show it: URLs with their password masked."""
    return mask_url(value) if isinstance(value, str) else value


def mask_document(document: dict[str, Any]) -> dict[str, Any]:
    """The settings as plain data (model_dump) with every secret masked, for `config show`."""
    database = document.get("database")
    if isinstance(database, dict) and isinstance(database.get("url"), str):
        database["url"] = mask_url(database["url"])
    identity = document.get("identity")
    if isinstance(identity, dict):
        for user in identity.get("users") or []:
            if isinstance(user, dict) and user.get("password_hash") is not None:
                user["password_hash"] = MASK
    return document
