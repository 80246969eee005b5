"""Rendered and thumbnail resources (PS3.18 9.5, 9.6, 8.3.5): stored images as JPEG or PNG.

`.../instances/{i}/rendered`, `.../instances/{i}/frames/{n}/rendered` and
`.../series/{s}/rendered` (the series' first image instance) render one frame at its own size,
or fitted into `viewport=w,h`; `.../thumbnail` at study, series, instance and frame level
renders the first image of the resource fitted into the viewport (default 128x128). The
media type follows Accept: image/jpeg (the default, also for `*/*` and `image/*`) or
image/png; anything else is 406 (PS3.18 8.3.3.1).

Grayscale pixels go through the Modality LUT (Rescale Slope and Intercept, or a Modality LUT
Sequence), then the VOI: the `window=center,width` query parameter (PS3.18 8.3.5.1.4), else
the instance's first Window Center and Width, else its VOI LUT Sequence, else the frame's
minimum and maximum; MONOCHROME1 is turned over (PS3.3 C.11.2, C.7.6.3.1.2). Colour images
arrive as RGB (pydicom converts YBR), palette colour through its LUTs. pydicom reads only the
frame asked for (pixel_array's `index`); the index query and the decoding run in the DICOMweb
executor (common.py), never on the loop.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.pixels.utils import pixel_array
from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pacsd.http.access import guarded
from pacsd.http.dicomweb.common import PREFIX, WebError, check_uid, handled, log, web_of
from pacsd.index.database import IndexDatabase
from pacsd.index.models import Instance, Series, Study
from pacsd.storage.base import InstanceStore

if TYPE_CHECKING:
    from pacsd.http.app import HttpContext

JPEG, PNG = "image/jpeg", "image/png"
THUMBNAIL_VIEWPORT = (128, 128)
MAX_VIEWPORT = 4096
JPEG_QUALITY = 90
CANDIDATES = 50  # instances looked at for the first image of a study or series
RENDER_TIMEOUT_S = 60.0
_ROWS = "00280010"  # in the index's JSON header: the instance has an image


@dataclass(frozen=True)
class Rendering:
    """What to draw and how: one frame (1-based), a viewport, a window, a media type."""

    frame: int
    viewport: tuple[int, int] | None
    window: tuple[float, float] | None
    media_type: str
    quality: int


def routes(context: HttpContext) -> list[Route]:
    """The rendered and thumbnail routes over `context`'s index and files."""
    web = web_of(context)
    archive = context.archive

    async def render(request: Request) -> Response:
        """GET a rendered or thumbnail resource."""
        params = request.path_params
        keys = tuple(
            check_uid(params[name], name) if name in params else None
            for name in ("study", "series", "instance")
        )
        thumbnail = request.url.path.endswith("/thumbnail")
        rendering = _rendering(request, params.get("frame"), thumbnail)
        found = await web.query(lambda: first_image(archive.index, *keys))
        if found is None:
            raise WebError(404, "no image instance at this resource")
        body = await web.run(lambda: _render(archive.files, found, rendering), RENDER_TIMEOUT_S)
        return Response(body, media_type=rendering.media_type, headers={"Vary": "Accept"})

    endpoint = guarded("read", handled(render))
    study = f"{PREFIX}/studies/{{study}}"
    series = f"{study}/series/{{series}}"
    instance = f"{series}/instances/{{instance}}"
    frame = f"{instance}/frames/{{frame}}"
    paths = [
        f"{instance}/rendered",
        f"{frame}/rendered",
        f"{series}/rendered",
        f"{study}/thumbnail",
        f"{series}/thumbnail",
        f"{instance}/thumbnail",
        f"{frame}/thumbnail",
    ]
    return [Route(path, endpoint, methods=["GET"]) for path in paths]


def _rendering(request: Request, frame_list: str | None, thumbnail: bool) -> Rendering:
    """The request's frame, viewport, window, quality and media type; 400 or 406 if wrong."""
    frame = 1
    if frame_list is not None:  # PS3.18 8.3.5.1: a rendered frame list names one frame here
        first = frame_list.split(",")[0].strip()
        if not first.isdigit() or int(first) < 1:
            raise WebError(400, f"frame numbers start at 1: {frame_list[:40]!r}")
        frame = int(first)
    query = request.query_params
    viewport = _pair(query.get("viewport"), "viewport")
    if viewport is not None:
        width, height = int(viewport[0]), int(viewport[1])
        if not (0 < width <= MAX_VIEWPORT and 0 < height <= MAX_VIEWPORT):
            raise WebError(400, f"viewport must be 1..{MAX_VIEWPORT} pixels each way")
        size: tuple[int, int] | None = (width, height)
    else:
        size = THUMBNAIL_VIEWPORT if thumbnail else None
    window = _pair(query.get("window"), "window")
    if window is not None and window[1] < 1:
        raise WebError(400, "window width must be at least 1")
    quality = query.get("quality", str(JPEG_QUALITY))
    if not quality.isdigit() or not 1 <= int(quality) <= 100:
        raise WebError(400, "quality must be 1..100")
    return Rendering(frame, size, window, _media_type(request), int(quality))


def _pair(text: str | None, name: str) -> tuple[float, float] | None:
    """`a,b` as two numbers (a window's third value, its function, is not supported)."""
    if text is None:
        return None
    parts = text.split(",")
    try:
        if len(parts) == 2:
            return float(parts[0]), float(parts[1])
    except ValueError:
        pass
    raise WebError(400, f"{name} must be two numbers: {text[:40]!r}")


def _media_type(request: Request) -> str:
    """image/jpeg or image/png by the Accept header's preference (q values), else 406."""
    accept = request.headers.get("accept", "") or "*/*"
    ranges: list[tuple[float, int, str]] = []
    for position, entry in enumerate(accept.split(",")):
        media, _, rest = entry.partition(";")
        quality = 1.0
        for parameter in rest.split(";"):
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        ranges.append((-quality, position, media.strip().lower()))
    for negative_quality, _, media in sorted(ranges):
        if negative_quality >= 0:
            break
        if media in (JPEG, "image/*", "*/*", "image/jpg"):
            return JPEG
        if media == PNG:
            return PNG
    raise WebError(406, "rendered resources are image/jpeg or image/png")


def first_image(
    index: IndexDatabase, study: str | None, series: str | None, instance: str | None
) -> str | None:
    """The stored file (relative path) of the first image instance of the resource: by series
    number and instance number, the instances without a number last."""
    statement = (
        select(Instance.file_path, Instance.header)
        .join(Series, Instance.series_fk == Series.pk)
        .join(Study, Series.study_fk == Study.pk)
        .where(Study.study_instance_uid == study)
    )
    if series is not None:
        statement = statement.where(Series.series_instance_uid == series)
    if instance is not None:
        statement = statement.where(Instance.sop_instance_uid == instance)
    statement = statement.order_by(
        Series.series_number.is_(None),
        Series.series_number,
        Series.pk,
        Instance.instance_number.is_(None),
        Instance.instance_number,
        Instance.pk,
    ).limit(CANDIDATES)
    with index.reading() as session:
        for file_path, header in session.execute(statement):
            if isinstance(header, dict) and _ROWS in header:
                return str(file_path)
    return None


def _render(files: InstanceStore, relative_path: str, rendering: Rendering) -> bytes:
    """Render a stored file: the filesystem's by its path, an object from its reader (ranged
    GETs with a bounded read-ahead, no copy). Blocking."""
    local = files.local_path(relative_path)
    if local is not None:
        return render_file(local, rendering)
    try:
        reader = files.open(relative_path)
    except FileNotFoundError:
        raise WebError(404, "the instance's file is missing") from None
    with reader:
        return render_file(reader, rendering)


def render_file(path: Path | BinaryIO, rendering: Rendering) -> bytes:
    """One frame of the stored file at `path` (or open as `path`, read from its start),
    encoded as `rendering` says."""
    try:
        dataset = dcmread(path, stop_before_pixels=True)
    except FileNotFoundError:
        raise WebError(404, "the instance's file is missing") from None
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if rendering.frame > frames:
        raise WebError(404, f"frame {rendering.frame} beyond the instance's {frames}")
    try:
        pixels = pixel_array(path, index=rendering.frame - 1 if frames > 1 else None)
    except Exception as exc:  # no decoder for the syntax, or broken pixel data
        log.info("rendering failed", error=f"{type(exc).__name__}: {exc}")
        raise WebError(500, f"the image cannot be decoded: {type(exc).__name__}") from None
    picture = Image.fromarray(_displayed(pixels, dataset, rendering.window))
    if rendering.viewport is not None:
        picture.thumbnail(rendering.viewport, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if rendering.media_type == PNG:
        picture.save(out, "PNG")
    else:
        picture.save(out, "JPEG", quality=rendering.quality)
    return out.getvalue()


def _displayed(
    pixels: NDArray[Any], dataset: Dataset, window: tuple[float, float] | None
) -> NDArray[np.uint8]:
    """8-bit display values of one frame: gray (rows x columns) or RGB (rows x columns x 3)."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3:  # RGB (YBR arrives converted)
        top = float(np.max(pixels)) if pixels.dtype != np.uint8 else 255.0
        scale = 255.0 / max(top, 1.0) if pixels.dtype != np.uint8 else 1.0
        return np.clip(pixels.astype(np.float64) * scale, 0, 255).astype(np.uint8)
    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    gray = _windowed(values, dataset, window)
    if photometric == "MONOCHROME1":
        gray = 1.0 - gray
    return np.round(gray * 255.0).astype(np.uint8)


def _windowed(
    values: NDArray[np.float64], dataset: Dataset, window: tuple[float, float] | None
) -> NDArray[np.float64]:
    """0..1 per pixel after the VOI (PS3.3 C.11.2.1.2.1, the linear function)."""
    if window is None and "WindowCenter" in dataset and "WindowWidth" in dataset:
        window = float(_first(dataset.WindowCenter)), float(_first(dataset.WindowWidth))
    if window is not None:
        center, width = window
        if width <= 1:
            return np.where(values <= center - 0.5, 0.0, 1.0)
        return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    if dataset.get("VOILUTSequence"):
        bits = int(dataset.VOILUTSequence[0].LUTDescriptor[2])
        mapped = apply_voi_lut(values, dataset, prefer_lut=True).astype(np.float64)
        return np.clip(mapped / float(2**bits - 1), 0.0, 1.0)
    low, high = float(np.min(values)), float(np.max(values))
    return (values - low) / (high - low) if high > low else np.zeros_like(values)


def _first(value: Any) -> Any:
    """The first value of a possibly multi-valued element."""
    return value[0] if isinstance(value, MultiValue | list | tuple) else value
