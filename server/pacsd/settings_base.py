"""The building blocks of pacsd's configuration models (settings.py, settings_security.py)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# PS3.5 6.2: AE is 16 characters of the default repertoire, no backslash, no control characters;
# leading and trailing spaces are not significant and an all-space value is not allowed.
_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE_RE.match(value):
        raise ValueError(
            "an AE title is 1 to 16 printable ASCII characters, no backslash, not all spaces"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Seconds = Annotated[float, Field(gt=0)]


class StrictModel(BaseModel):
    """Base of every configuration section: unknown keys are errors, not ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
