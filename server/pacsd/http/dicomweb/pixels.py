"""WADO-RS frames and bulk data (PS3.18 10.4.1.1.3, 10.4.1.1.4), straight from the stored file.

`/frames/{list}`: the frames named (1-based, comma-separated), one part each, in the order
asked. Compressed frames go as stored with their media type (image/jpeg, image/jls, ...,
PS3.18 Table 8.7.3-5) when the Accept header allows it (`*/*` does); native frames, or
compressed ones the client wants native, go as application/octet-stream (Explicit VR Little
Endian, decoded in memory when stored compressed). The byte ranges of each frame come from
layout.py and are read in blocks (streams.py).

`/bulkdata/{tag}`: a top-level bulk data element of the instance, as its metadata's
BulkDataURI names it: one application/octet-stream part; the pixel data tag gives every
frame, as /frames would. Unknown tag, frame or instance: 404; a frame list that does not
parse: 400; no acceptable representation: 406.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from pacsd.dicom.frames import encapsulated_frames, native_frames, read_stored
from pacsd.dicom.transcode import TranscodeError, can_decode, transcoded_dataset
from pacsd.http.access import guarded
from pacsd.http.dicomweb.accept import OCTET_STREAM, PixelChoice, parse_accept, pixel_choice
from pacsd.http.dicomweb.common import PREFIX, Web, WebError, handled
from pacsd.http.dicomweb.layout import (
    Layout,
    Range,
    encapsulated_frame_ranges,
    native_frame_ranges,
)
from pacsd.http.dicomweb.multipart import MultipartWriter
from pacsd.http.dicomweb.streams import (
    Source,
    Transfer,
    file_chunks,
    instance_batches,
    instance_layout,
    local_file,
    memory_chunks,
    one,
    source_of,
)
from pacsd.http.dicomweb.wado import Target, target_of, transfer_of
from pacsd.index.retrieve import StoredInstance

MAX_FRAMES_LISTED = 10_000


def frame_numbers(text: str) -> list[int]:
    """PS3.18 10.4.1.1.3: a comma-separated list of frame numbers, each >= 1 (else 400)."""
    try:
        numbers = [int(part) for part in text.split(",")]
    except ValueError:
        raise WebError(400, f"frame list {text[:80]!r} is not comma-separated numbers") from None
    if not numbers or min(numbers) < 1 or len(numbers) > MAX_FRAMES_LISTED:
        raise WebError(400, "frame numbers start at 1")
    return numbers


async def _instance(web: Web, target: Target) -> tuple[StoredInstance, Source, Layout]:
    batches = instance_batches(web, target.selection)
    try:
        stored = (await anext(batches))[0]
    finally:
        await batches.aclose()
    path = source_of(web.context.archive.files, stored.file_path)
    try:
        layout = await web.run(partial(instance_layout, path, stored.transfer_syntax_uid))
    except FileNotFoundError:
        raise WebError(404, "the instance's file is missing") from None
    except (OSError, TranscodeError) as exc:
        raise WebError(500, f"the instance's file cannot be read: {exc}") from None
    return stored, path, layout


def _in_memory_frames(
    layout: Layout, source: Source, numbers: Sequence[int], native: bool
) -> list[bytes]:
    with local_file(source) as path:
        return _frames_of(layout, path, numbers, native)


def _frames_of(layout: Layout, path: Path, numbers: Sequence[int], native: bool) -> list[bytes]:
    """Frames extracted from the parsed instance (when the file's ranges do not tell them
    apart, or they must be decoded): compressed as stored, or native (blocking)."""
    count = layout.frame_count
    if native and layout.encapsulated:
        if not can_decode(layout.transfer_syntax):
            raise WebError(406, f"frames of {layout.transfer_syntax} cannot be decoded here")
        dataset = transcoded_dataset(path, ExplicitVRLittleEndian)
        return [native_frames(dataset, [number], count) for number in numbers]
    dataset = read_stored(path, layout.transfer_syntax)
    if native:
        return [native_frames(dataset, [number], count) for number in numbers]
    frames = encapsulated_frames(dataset, numbers, count, layout.transfer_syntax)
    if frames is None:
        raise WebError(406, "the compressed frames cannot be told apart; ask for them native")
    return frames


def _chunks(
    web: Web, layout: Layout, path: Source, ranges: Sequence[Range]
) -> AsyncIterator[bytes]:
    if isinstance(layout.source, bytes):
        return memory_chunks(layout.source, ranges)
    return file_chunks(web, path, ranges)


async def frames_body(
    web: Web,
    layout: Layout,
    path: Source,
    numbers: Sequence[int] | None,
    choice: PixelChoice,
    transfer: Transfer,
    sop_class: str,
    writer: MultipartWriter,
) -> AsyncIterator[bytes]:
    """One part per frame, read from the file's ranges when they are known (`numbers` None:
    the whole pixel data; native, that is one part)."""
    content_type = f"{choice.media_type}; transfer-syntax={choice.transfer_syntax}"
    ranges: list[list[Range]] | None = None
    if numbers is None and not layout.encapsulated and layout.pixel is not None:
        ranges = [[(layout.pixel.offset, layout.pixel.length)]]
    numbers = numbers or list(range(1, layout.frame_count + 1))
    if ranges is None and (choice.as_stored or not layout.encapsulated):
        finder = encapsulated_frame_ranges if layout.encapsulated else native_frame_ranges
        ranges = finder(layout, numbers)
    try:
        if ranges is not None:
            for frame in ranges:
                async for chunk in writer.part(content_type, _chunks(web, layout, path, frame)):
                    yield chunk
        else:
            native = not choice.as_stored
            frames = await web.run(partial(_in_memory_frames, layout, path, numbers, native))
            for data in frames:
                async for chunk in writer.part(content_type, one(data)):
                    yield chunk
        yield writer.close()
        transfer.sent[sop_class] += 1
        transfer.complete = True
    finally:
        transfer.audit()


def _choice(request: Request, layout: Layout) -> PixelChoice:
    ranges = parse_accept(request.headers.get("accept"))
    choice = pixel_choice(ranges, layout.transfer_syntax, layout.encapsulated)
    if choice is None:
        raise WebError(
            406, f"no acceptable media type for pixel data stored as {layout.transfer_syntax}"
        )
    if not choice.as_stored and layout.encapsulated and not can_decode(layout.transfer_syntax):
        raise WebError(406, f"frames stored as {layout.transfer_syntax} cannot be decoded here")
    return choice


async def _frames_response(
    web: Web, request: Request, target: Target, stored: StoredInstance, path: Source,
    layout: Layout, numbers: list[int] | None, what: str,
) -> Response:  # fmt: skip
    count = layout.frame_count
    if not count:
        raise WebError(404, "the instance has no pixel data")
    beyond = [number for number in numbers or () if number > count]
    if beyond:
        raise WebError(404, f"frame {beyond[0]} does not exist (the instance has {count})")
    choice = _choice(request, layout)
    transfer = transfer_of(web, request, target, f"{what} of {request.url.path}")
    writer = MultipartWriter(choice.media_type)
    body = frames_body(web, layout, path, numbers, choice, transfer, stored.sop_class_uid, writer)
    return StreamingResponse(body, media_type=writer.content_type)


def routes_of(web: Web) -> list[Route]:
    """The frames and bulk data resources of an instance."""

    async def frames(request: Request) -> Response:
        numbers = frame_numbers(request.path_params["frames"])
        target = await target_of(web, request)
        stored, path, layout = await _instance(web, target)
        return await _frames_response(web, request, target, stored, path, layout, numbers, "frames")

    async def bulkdata(request: Request) -> Response:
        name = request.path_params["tag"].strip("/")
        try:
            tag = int(name, 16) if len(name) == 8 else -1
        except ValueError:
            tag = -1
        target = await target_of(web, request)
        stored, path, layout = await _instance(web, target)
        if tag == layout.pixel_tag:
            return await _frames_response(
                web, request, target, stored, path, layout, None, "pixel data"
            )
        bulk = layout.bulk.get(tag)
        if bulk is None:
            raise WebError(404, f"no bulk data {name[:40]!r} in this instance")
        ranges = parse_accept(request.headers.get("accept"))
        if not any(media.fits(OCTET_STREAM) for media in ranges):
            raise WebError(406, "bulk data is application/octet-stream")
        writer = MultipartWriter(OCTET_STREAM)
        transfer = transfer_of(web, request, target, f"bulk data of {request.url.path}")
        chunks = _chunks(web, layout, path, [(bulk.offset, bulk.length)])

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in writer.part(OCTET_STREAM, chunks):
                    yield chunk
                yield writer.close()
                transfer.sent[stored.sop_class_uid] += 1
                transfer.complete = True
            finally:
                transfer.audit()

        return StreamingResponse(body(), media_type=writer.content_type)

    instance = PREFIX + "/studies/{study}/series/{series}/instances/{instance}"
    return [
        Route(instance + "/frames/{frames}", guarded("read", handled(frames)), methods=["GET"]),
        Route(
            instance + "/bulkdata/{tag:path}", guarded("read", handled(bulkdata)), methods=["GET"]
        ),
    ]
