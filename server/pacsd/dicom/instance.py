"""An incoming Part 10 file, checked and parsed once before anything is stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO

from pacsd.dicom.header import InstanceAttributes, extract_attributes, header_json, read_header
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


def parse_part10(fp: BinaryIO, max_inflated_size: int) -> ParsedInstance:
    """Check every element of the file's data set fits its bytes, then parse its header.

    Raises CannotUnderstand for a stream that is not sound DICOM and DatasetMismatch when the
    identifying UIDs are missing.
    """
    layout = read_layout(fp)
    source = open_dataset(fp, layout, max_inflated_size)
    check_dataset(source.stream, source.start, source.end, source.explicit_vr, source.little_endian)
    dataset = read_header(source)
    return ParsedInstance(
        layout=layout, attributes=extract_attributes(dataset), header=header_json(dataset)
    )
