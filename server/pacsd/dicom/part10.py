"""DICOM Part 10 files (PS3.10 7.1): pacsd's file meta, and where a file's data set starts."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property
from typing import BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from pacsd import __version__
from pacsd.errors import CannotUnderstand, OutOfResources

# pacsd's Implementation Class UID: a UUID-derived OID (PS3.5 B.2), fixed for the product.
IMPLEMENTATION_CLASS_UID = UID("2.25.24391475454168564945063384342344163270")
IMPLEMENTATION_VERSION_NAME = f"PACSD_{__version__}"[:16]
PREAMBLE = b"\x00" * 128 + b"DICM"
_GROUP_LENGTH_TAG = b"\x02\x00\x00\x00UL\x04\x00"
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Part10Layout:
    """What the file meta of a Part 10 file says, and where its data set lies. `meta`: the
    file meta as read (None for a file pacsd wrote its own file meta for: its transfer
    syntax is the presentation context's)."""

    transfer_syntax: str
    dataset_offset: int
    file_size: int
    meta: FileMetaDataset | None = None

    @cached_property
    def transfer_syntax_uid(self) -> UID:
        """The transfer syntax the data set is encoded in."""
        return UID(self.transfer_syntax)


def read_layout(fp: BinaryIO) -> Part10Layout:
    """Read the preamble and file meta of `fp` (PS3.10 7.1) and locate its data set."""
    fp.seek(0, io.SEEK_END)
    file_size = fp.tell()
    fp.seek(0)
    head = fp.read(132 + 12)
    if len(head) < 144 or head[128:132] != b"DICM":
        raise CannotUnderstand("not a DICOM Part 10 stream (no DICM prefix)")
    if head[132:140] != _GROUP_LENGTH_TAG:
        raise CannotUnderstand("file meta has no File Meta Information Group Length")
    (group_length,) = struct.unpack("<L", head[140:144])
    dataset_offset = 144 + group_length
    if dataset_offset > file_size:
        raise CannotUnderstand("file meta group length exceeds the data")
    meta_bytes = fp.read(group_length)
    meta = FileMetaDataset(read_dataset(io.BytesIO(meta_bytes), False, True))
    if "TransferSyntaxUID" not in meta:
        raise CannotUnderstand("file meta has no Transfer Syntax UID")
    return Part10Layout(str(meta.TransferSyntaxUID), dataset_offset, file_size, meta)


def read_file_meta(fp: BinaryIO) -> tuple[Part10Layout, FileMetaDataset]:
    """`read_layout`, and the file meta it read."""
    layout = read_layout(fp)
    assert layout.meta is not None  # read from the file
    return layout, layout.meta


def read_dataset_offset(fp: BinaryIO, name: str) -> int:
    """Where the data set of a Part 10 file pacsd stored begins (after its file meta group),
    read from the file open in `fp` at its start; `name` for the error."""
    head = fp.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:140] != _GROUP_LENGTH_TAG:
        raise CannotUnderstand(f"{name} is not a Part 10 file with a group length")
    (group_length,) = struct.unpack("<L", head[140:144])
    return 144 + int(group_length)


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae_title: str
) -> bytes:
    """Preamble, DICM prefix and pacsd's file meta group for a stored instance.

    The group is always the same eight elements of fixed form (PS3.10 7.1, Explicit VR Little
    Endian), so it is packed here directly: pydicom's generic writer took about 1 ms per
    C-STORE. tests/unit/test_part10.py checks the bytes against pydicom's writer.
    """
    elements = [
        _element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, b"UI", _uid(sop_class_uid)),
        _element(0x0003, b"UI", _uid(sop_instance_uid)),
        _element(0x0010, b"UI", _uid(transfer_syntax_uid)),
        _IMPLEMENTATION_ELEMENTS,
    ]
    if source_ae_title:  # (0002,0016), PS3.10 7.1
        elements.append(_element(0x0016, b"AE", _text(source_ae_title)))
    group = b"".join(elements)
    return PREAMBLE + _GROUP_LENGTH_TAG + struct.pack("<L", len(group)) + group


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of group 0002 (PS3.5 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xL", 0x0002, element, vr, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, element, vr, len(value)) + value


def _uid(value: str) -> bytes:
    encoded = value.encode("latin-1", "replace")
    return encoded + b"\x00" if len(encoded) % 2 else encoded  # UI pads with NULL


def _text(value: str) -> bytes:
    encoded = value.encode("latin-1", "replace")
    return encoded + b" " if len(encoded) % 2 else encoded


_IMPLEMENTATION_ELEMENTS = _element(0x0012, b"UI", _uid(IMPLEMENTATION_CLASS_UID)) + _element(
    0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)
)


@dataclass(frozen=True)
class DatasetStream:
    """A readable view of an encoded data set: bytes [start, end) of `stream`."""

    stream: BinaryIO
    start: int
    end: int
    explicit_vr: bool
    little_endian: bool


def open_dataset(fp: BinaryIO, layout: Part10Layout, max_inflated_size: int) -> DatasetStream:
    """The data set of a Part 10 file, inflated first when its transfer syntax is Deflated."""
    syntax = layout.transfer_syntax_uid
    if syntax == DeflatedExplicitVRLittleEndian:  # PS3.5 A.5: raw deflate, no zlib header
        inflated = _inflate(fp, layout.dataset_offset, max_inflated_size)
        return DatasetStream(inflated, 0, len(inflated.getbuffer()), True, True)
    if not syntax.is_transfer_syntax:
        raise CannotUnderstand(f"unknown transfer syntax {syntax}")
    return DatasetStream(
        fp,
        layout.dataset_offset,
        layout.file_size,
        not syntax.is_implicit_VR,
        syntax.is_little_endian,
    )


def _inflate(fp: BinaryIO, offset: int, max_size: int) -> io.BytesIO:
    fp.seek(offset)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = io.BytesIO()
    try:
        while chunk := fp.read(_COPY_CHUNK):
            out.write(inflater.decompress(chunk, max(1, max_size + 1 - out.tell())))
            if out.tell() > max_size or inflater.unconsumed_tail:
                raise OutOfResources(f"deflated data set inflates beyond {max_size} bytes")
        out.write(inflater.flush())
    except zlib.error as exc:
        raise CannotUnderstand(f"deflated data set is corrupt: {exc}") from None
    if not inflater.eof:
        raise CannotUnderstand("deflated data set is truncated")
    return out
