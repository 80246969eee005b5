"""Transfer syntax groups (PS3.5 Annex A, Table A-1) and pacsd's order of preference.

The engine's negotiation (engine/negotiation.py) accepts, for each proposed presentation
context, the first syntax of pacsd's list that the peer proposed, so the order of
`STORAGE_PREFERENCE` decides what a peer that offers several syntaxes in one context will send:
uncompressed first (every later reader can use it), then lossless compression, and a lossy or
video syntax only when nothing else was offered.
"""

from __future__ import annotations

from pydicom.uid import (
    UID,
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
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
)
# Syntaxes newer than pydicom 3.0's list (PS3.5 Table A-1).
_NEWER = (
    "1.2.840.10008.1.2.4.94",  # JPIP Referenced
    "1.2.840.10008.1.2.4.95",  # JPIP Referenced Deflate
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    # JPEG XL JPEG Recompression repacks a JPEG without further loss, but the pixels went
    # through lossy JPEG first (PS3.5 A.4.11): it belongs with the lossy syntaxes.
    "1.2.840.10008.1.2.4.111",
)
# Keywords pydicom 3.0's dictionary lacks (PS3.6 Table A-1). pynetdicom adds them to pydicom's
# dictionary when it is imported; naming them here makes `resolve` give the same answer in
# `pacsd config check` (no pynetdicom) as in the server.
_NEWER_KEYWORDS = {
    "1.2.840.10008.1.2.4.110": "JPEGXLLossless",
    "1.2.840.10008.1.2.4.111": "JPEGXLJPEGRecompression",
    "1.2.840.10008.1.2.4.112": "JPEGXL",
    "1.2.840.10008.1.2.8.1": "DeflatedImageFrameCompression",
}
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

# Named groups a policy's `transfer_syntaxes` can use. "lossy" holds every syntax that is not
# uncompressed, lossless or video: lossy (or possibly lossy) compression and referenced pixel data.
GROUPS: dict[str, tuple[str, ...]] = {
    "uncompressed": UNCOMPRESSED,
    "lossless": LOSSLESS,
    "lossy": OTHER,
    "video": VIDEO,
    "all": STORAGE_PREFERENCE,
}


def resolve(token: str) -> tuple[str, ...]:
    """The transfer syntax UIDs a policy entry names: a group, a keyword or a UID, in order.

    Raises ValueError naming the entry when it is none of these.
    """
    if token in GROUPS:
        return GROUPS[token]
    for uid in STORAGE_PREFERENCE:
        keyword = _NEWER_KEYWORDS.get(uid) or UID(uid).keyword
        if token == uid or (keyword and token == keyword):
            return (uid,)
    raise ValueError(
        f"{token!r} is not a transfer syntax group ({', '.join(GROUPS)}), "
        "a transfer syntax keyword such as JPEG2000Lossless, or a transfer syntax UID"
    )


def group_of(uid: str) -> str:
    """The group a transfer syntax belongs to, for explanations."""
    for name in ("uncompressed", "lossless", "video"):
        if uid in GROUPS[name]:
            return name
    return "lossy"
