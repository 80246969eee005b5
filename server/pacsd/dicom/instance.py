"""An incoming Part 10 file, checked and parsed once before anything is stored."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian

from pacsd.dicom.header import InstanceAttributes, attributes_from_json, header_json, read_header
from pacsd.dicom.header_bytes import fast_header_json
from pacsd.dicom.integrity import check_dataset
from pacsd.dicom.part10 import Part10Layout, open_dataset, read_layout


@dataclass(frozen=True)
class ParsedInstance:
    """A structurally sound instance: its layout, index attributes and JSON header."""

    layout: Part10Layout
    attributes: InstanceAttributes
    header: dict[str, Any]

    @property
    def dataset_size(self) -> int:
        """Bytes of the encoded data set as received (after the file meta)."""
        return self.layout.file_size - self.layout.dataset_offset


def parse_part10(
    fp: BinaryIO,
    max_inflated_size: int,
    max_inflate_ratio: int | None = None,
    layout: Part10Layout | None = None,
) -> ParsedInstance:
    """Check every element of the file's data set fits its bytes, then parse its header;
    `layout`: the file's, when known (pacsd wrote the file meta), else read from the file.

    Raises CannotUnderstand for a stream that is not sound DICOM, DatasetMismatch when the
    identifying UIDs are missing, and OutOfResources when a deflated data set would inflate
    beyond `max_inflated_size` or `max_inflate_ratio` times its received size.
    """
    if layout is None:
        layout = read_layout(fp)
    source = open_dataset(fp, layout, inflate_limit(layout, max_inflated_size, max_inflate_ratio))
    check_dataset(source.stream, source.start, source.end, source.explicit_vr, source.little_endian)
    header = None
    if source.little_endian and isinstance(source.stream, io.BytesIO):
        with source.stream.getbuffer() as buffer:
            header = fast_header_json(buffer, source.start, source.end, source.explicit_vr)
    if header is None:
        header = header_json(read_header(source))
    return ParsedInstance(layout=layout, attributes=attributes_from_json(header), header=header)


# Below this, the ratio does not apply: a small, mostly blank image deflates beyond any sane
# ratio (DEFLATE reaches ~1000:1 on zeros) and a few MiB in memory are no danger.
RATIO_FREE_INFLATED_SIZE = 4 * 1024**2


def inflate_limit(layout: Part10Layout, max_inflated_size: int, max_ratio: int | None) -> int:
    """The most bytes a Deflated (PS3.5 A.5) data set of this file may inflate to.

    `max_ratio` bounds inflated/received bytes, so that a few KB cannot make pacsd hold
    hundreds of MB (a "deflate bomb"); non-deflated data sets ignore the result.
    """
    if layout.transfer_syntax != DeflatedExplicitVRLittleEndian or max_ratio is None:
        return max_inflated_size
    received = layout.file_size - layout.dataset_offset
    return min(max_inflated_size, max(received * max_ratio, RATIO_FREE_INFLATED_SIZE))
