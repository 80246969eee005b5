"""Transfer syntax groups (PS3.5 Annex A, Table A-1) and pacsd's order of preference.

pynetdicom accepts, for each proposed presentation context, the first syntax of the acceptor's
list that the peer proposed, so the order of `STORAGE_PREFERENCE` decides what a peer that
offers several syntaxes in one context will send: uncompressed first (every later reader can use
it), then lossless compression, and a lossy or video syntax only when nothing else was offered.
"""

from __future__ import annotations

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MPEGTransferSyntaxes,
)

UNCOMPRESSED = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)
LOSSLESS = (
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression (lossless of a JPEG)
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
# Syntaxes newer than pydicom 3.0's list (PS3.5 Table A-1).
_NEWER = (
    "1.2.840.10008.1.2.4.94",  # JPIP Referenced
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.112",  # JPEG XL
)
VIDEO = tuple(str(uid) for uid in MPEGTransferSyntaxes)
# Everything else pacsd knows: lossy or possibly lossy image compression, referenced pixel data,
# SMPTE ST 2110 essence. Stored as received, never decoded.
OTHER = tuple(
    uid
    for uid in dict.fromkeys([*(str(u) for u in AllTransferSyntaxes), *_NEWER])
    if uid not in {*UNCOMPRESSED, *LOSSLESS, *VIDEO}
)
STORAGE_PREFERENCE: tuple[str, ...] = (*UNCOMPRESSED, *LOSSLESS, *OTHER, *VIDEO)
VERIFICATION_PREFERENCE: tuple[str, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
