"""DICOMweb (PS3.18) at /dicom-web: the same archive, index, HTTP rules and audit trail as the
DICOM port.

Each module serves one family of resources and has a `routes(context)`; `routes` below adds
them up (app.py adds its result to the application's routes). QIDO-RS: qido.py (search.py
turns query parameters into C-FIND keys). WADO-RS: wado.py (instances and metadata),
pixels.py (frames and bulk data), with accept.py (media types and transfer syntaxes),
layout.py (where frames and bulk data lie in a stored file), streams.py (files read in the
executor as they are sent), multipart.py (multipart/related bodies). common.py holds the
executor, the errors and the URLs they share; auditing.py their audit messages.
A new module (STOW-RS: stow.py; rendered resources: rendered.py) adds its `routes(context)`
to the list in `routes`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import Route

from pacsd.http.dicomweb import qido, rendered, stow, wado_routes

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext


def routes(context: HttpContext) -> list[Route]:
    """Every DICOMweb route, under /dicom-web."""
    return [
        *stow.routes(context),  # STOW-RS: POST /studies[/{study}]
        *rendered.routes(context),  # .../rendered, .../thumbnail (literal last segments)
        *qido.routes(context),
        *wado_routes.routes(context),
    ]
