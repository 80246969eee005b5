"""The WADO-RS routes (PS3.18 10.4): instances and metadata (wado.py), frames and bulk data
(pixels.py), on the DICOMweb side's shared executor."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from pacsd.http.dicomweb import pixels, wado
from pacsd.http.dicomweb.common import web_of

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext


def routes(context: HttpContext) -> list[Route]:
    """The WADO-RS resources: the frames and bulk data routes first (longer paths)."""
    web = web_of(context)
    return [*pixels.routes_of(web), *wado.routes_of(web)]
