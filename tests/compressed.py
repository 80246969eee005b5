"""Images in every transfer syntax pacsd transcodes, generated with numpy and real encoders.

Lossless syntaxes and the lossy JPEG-LS / JPEG 2000 ones go through pydicom's own encoders (the
plugins pacsd depends on). No installed plugin writes JPEG Baseline or Extended (pydicom 3.0 has no
encoder for them), so a small DCT encoder below writes real ISO 10918-1 codestreams: Huffman
sequential, one quantisation table, 4:2:2 YCbCr for colour (PS3.5 8.2.1).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLSNearLossless,
)

from tests.datagen import StudyContext, ct_image, us_multiframe

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian)


@dataclass(frozen=True)
class ImageKind:
    """The Image Pixel module of a generated image (PS3.3 C.7.6.3)."""

    rows: int = 64
    columns: int = 64
    frames: int = 1
    samples: int = 1
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    photometric: str = "MONOCHROME2"

    @property
    def dtype(self) -> str:
        """The numpy dtype pydicom returns for this image."""
        return f"{'i' if self.signed else 'u'}{self.bits_allocated // 8}"


_RGB8 = ImageKind(samples=3, bits_allocated=8, bits_stored=8, photometric="RGB")
KINDS: dict[str, ImageKind] = {
    "mono8": ImageKind(bits_allocated=8, bits_stored=8),
    "odd8": ImageKind(rows=61, columns=63, bits_allocated=8, bits_stored=8),
    "mono12": ImageKind(bits_stored=12),
    "mono16": ImageKind(),
    "signed16": ImageKind(signed=True),
    "multiframe": ImageKind(frames=3, bits_stored=12),
    "mono32": ImageKind(bits_allocated=32, bits_stored=32),  # beyond JPEG-LS and JPEG 2000
    "rgb8": _RGB8,
    "ybr8": replace(_RGB8, photometric="YBR_FULL"),  # native YBR_FULL (PS3.3 C.7.6.3.1.2)
    "rgb_multiframe": replace(_RGB8, frames=2),
}


def pixel_array(kind: ImageKind, seed: int = 0) -> np.ndarray:
    """Smooth gradients with a little noise, shaped the way pydicom returns pixel arrays."""
    lowest = -(1 << (kind.bits_stored - 1)) if kind.signed else 0
    highest = lowest + (1 << kind.bits_stored) - 1
    f, y, x, s = np.mgrid[0 : kind.frames, 0 : kind.rows, 0 : kind.columns, 0 : kind.samples]
    # Each sample runs along a different direction; each frame is shifted.
    ramp = (np.where(s == 1, y, x) + np.where(s == 2, y, 0) + 7 * f) / (kind.rows + kind.columns)
    noise = np.random.default_rng(seed).integers(-2, 3, size=ramp.shape)
    values = np.clip(lowest + ramp * (highest - lowest) + noise, lowest, highest)
    shape = [kind.rows, kind.columns]
    if kind.frames > 1:
        shape.insert(0, kind.frames)
    if kind.samples > 1:
        shape.append(kind.samples)
    return values.astype(kind.dtype).reshape(shape)


def image_dataset(kind_name: str, study: StudyContext | None = None) -> tuple[Dataset, np.ndarray]:
    """A native Explicit VR Little Endian image of `kind_name` (a key of KINDS), and its pixels.

    Grey images are CT Image Storage, colour ones Ultrasound Multi-frame Image Storage.
    """
    kind = KINDS[kind_name]
    study = study or StudyContext()
    if kind.samples == 1:
        ds = ct_image(study, size=kind.rows)
    else:
        ds = us_multiframe(study, frames=kind.frames)
    arr = pixel_array(kind)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = kind.rows, kind.columns, kind.samples
    ds.PhotometricInterpretation = kind.photometric
    ds.BitsAllocated, ds.BitsStored = kind.bits_allocated, kind.bits_stored
    ds.HighBit, ds.PixelRepresentation = kind.bits_stored - 1, int(kind.signed)
    if kind.samples > 1:
        ds.PlanarConfiguration = 0
    if kind.frames > 1 or "NumberOfFrames" in ds:
        ds.NumberOfFrames = kind.frames
    ds.PixelData = arr.tobytes() + b"\x00" * (arr.nbytes % 2)
    ds["PixelData"].VR = "OB" if kind.bits_allocated == 8 else "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds, arr


def encode_instance(ds: Dataset, syntax: str) -> Dataset:
    """Encode the native image `ds` (from `image_dataset`) in `syntax`, in place."""
    uid = UID(syntax)
    if uid in NATIVE or "PixelData" not in ds:
        pass
    elif uid == ExplicitVRBigEndian:
        _swap_words_to_big_endian(ds)  # pydicom writes OW values as they are (PS3.5 A.3)
    elif uid in (JPEGBaseline8Bit, JPEGExtended12Bit):
        _encode_jpeg_dct(ds, precision=8 if uid == JPEGBaseline8Bit else 12)
    elif uid == JPEGLSNearLossless:
        ds.compress(uid, jls_error=2, generate_instance_uid=False)
        _mark_lossy(ds, "ISO_14495_1")
    elif uid == JPEG2000:
        ds.compress(uid, j2k_cr=[8], generate_instance_uid=False)
        _mark_lossy(ds, "ISO_15444_1")
    else:
        ds.compress(uid, generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = uid
    return ds


def write_instance(path: Path, syntax: str, kind: str = "mono16") -> np.ndarray:
    """Write a Part 10 file of `kind` encoded in `syntax`; the pixels before any lossy encoding."""
    ds, arr = image_dataset(kind)
    encode_instance(ds, syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return arr


def compressed_ct_dataset(syntax: str, study: StudyContext | None = None) -> Dataset:
    """A complete 64x64 CT Image Storage instance (12 of 16 bits) encoded in `syntax`.

    UIDs come from `generate_uid`; file_meta is set. JPEG Baseline carries 8-bit pixels, which
    the CT Image IOD does not allow (PS3.3 C.8.2.1.1.4) but transfer tests do not mind.
    """
    kind = "mono8" if UID(syntax) == JPEGBaseline8Bit else "mono12"
    ds, _ = image_dataset(kind, study)
    return encode_instance(ds, syntax)


def _swap_words_to_big_endian(ds: Dataset) -> None:
    for element in ds.iterall():
        size = 2 if element.VR == "OW" else 0
        if element.tag == 0x7FE00010 and element.VR == "OW":
            size = max(2, ds.BitsAllocated // 8)  # pydicom reads 32-bit pixels as 32-bit words
        if size and element.value:
            element.value = np.frombuffer(element.value, f"<u{size}").astype(f">u{size}").tobytes()


def _mark_lossy(ds: Dataset, method: str) -> None:
    """PS3.3 C.7.6.1.1.5: the instance has been through lossy compression."""
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = method


# --- A minimal ISO 10918-1 DCT encoder (Huffman sequential, Annex F) ---------------------------

_ZIGZAG = np.array(
    sorted(range(64), key=lambda i: (i // 8 + i % 8, i // 8 if (i // 8 + i % 8) % 2 else i % 8))
)
_QUANT = 2  # one flat table: lossy, but every coefficient fits its Huffman category
_DCT = np.array(  # A.3.3: F = C f C^T with C[u, x] = c(u)/2 cos((2x+1)u pi/16)
    [
        [
            (np.sqrt(0.5) if u == 0 else 1.0) * np.cos((2 * x + 1) * u * np.pi / 16) / 2
            for x in range(8)
        ]
        for u in range(8)
    ]
)


def _encode_jpeg_dct(ds: Dataset, precision: int) -> None:
    """Replace the native pixels of `ds` by JPEG Baseline (8-bit) or Extended (12-bit) frames."""
    if (
        ds.PixelRepresentation
        or ds.BitsStored > precision
        or ds.BitsAllocated != (8 if precision == 8 else 16)
    ):
        raise ValueError(f"{precision}-bit JPEG needs unsigned pixels of at most {precision} bits")
    frames = ds.pixel_array.reshape(
        int(ds.get("NumberOfFrames", 1)), ds.Rows, ds.Columns, ds.SamplesPerPixel
    )
    native_size = frames.nbytes
    if ds.SamplesPerPixel == 3:
        frames = _ycbcr(frames)
        # PS3.5 8.2.1: JPEG lossy colour is YBR_FULL_422 when the chroma is subsampled.
        ds.PhotometricInterpretation = "YBR_FULL_422"
    codestreams = [_jpeg_codestream(frame, precision) for frame in frames]
    ds.PixelData = encapsulate(codestreams)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    _mark_lossy(ds, "ISO_10918_1")
    ds.LossyImageCompressionRatio = f"{native_size / sum(map(len, codestreams)):.2f}"[:16]


def _ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB to the YCbCr of JFIF, which is DICOM's YBR_FULL (PS3.3 C.7.6.3.1.2)."""
    r, g, b = (rgb[..., i].astype(float) for i in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return np.clip(np.rint(np.stack([y, cb, cr], axis=-1)), 0, 255).astype(np.uint8)


def _jpeg_codestream(frame: np.ndarray, precision: int) -> bytes:
    """One frame (rows, columns, samples) as an interchange-format JPEG codestream."""
    samples = frame.shape[2]
    sampling = [(2, 1), (1, 1), (1, 1)] if samples == 3 else [(1, 1)]
    dc_table, ac_table = _huffman_tables(precision)
    header = [
        _segment(0xDB, bytes([0]) + bytes([_QUANT] * 64)),
        _segment(0xC0 if precision == 8 else 0xC1, _frame_header(frame, precision, sampling)),
        _segment(0xC4, bytes([0x00]) + dc_table[0] + bytes([0x10]) + ac_table[0]),
        _segment(
            0xDA, bytes([samples, *[b for c in range(samples) for b in (c + 1, 0)], 0, 63, 0])
        ),
    ]
    blocks = _mcu_blocks(frame.astype(float) - (1 << (precision - 1)), sampling)
    scan = _entropy_coded(blocks, dc_table[1], ac_table[1])
    return b"\xff\xd8" + b"".join(header) + scan + b"\xff\xd9"


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _frame_header(frame: np.ndarray, precision: int, sampling: list[tuple[int, int]]) -> bytes:
    rows, columns, samples = frame.shape
    head = bytes([precision]) + rows.to_bytes(2, "big") + columns.to_bytes(2, "big")
    return head + bytes(
        [samples, *[b for c, (h, v) in enumerate(sampling) for b in (c + 1, h << 4 | v, 0)]]
    )


def _huffman_tables(precision: int) -> tuple[tuple[bytes, dict[int, str]], ...]:
    """Canonical tables giving every possible symbol a code of one length (Annex C, K.2)."""
    dc_symbols = list(range(precision + 4))  # DC difference categories 0..11 or 0..15
    ac_symbols = [0x00, 0xF0] + [r << 4 | s for r in range(16) for s in range(1, precision + 3)]
    tables = []
    for symbols in (dc_symbols, ac_symbols):
        length = len(symbols).bit_length()  # codes 0..n-1 never reach the all-ones code
        counts = [len(symbols) if n == length else 0 for n in range(1, 17)]
        codes = {symbol: format(i, f"0{length}b") for i, symbol in enumerate(symbols)}
        tables.append((bytes(counts) + bytes(symbols), codes))
    return tuple(tables)


def _mcu_blocks(frame: np.ndarray, sampling: list[tuple[int, int]]) -> list[tuple[int, np.ndarray]]:
    """The 8x8 blocks of the frame in scan order, with their component index (A.2)."""
    mcu_width, rows, columns = 8 * sampling[0][0], *frame.shape[:2]
    padded_rows, padded_columns = -(-rows // 8) * 8, -(-columns // mcu_width) * mcu_width
    frame = np.pad(frame, ((0, padded_rows - rows), (0, padded_columns - columns), (0, 0)), "edge")
    planes = [frame[..., 0]]
    if len(sampling) == 3:  # 4:2:2: chroma averaged over pairs of columns
        planes += [frame[..., c].reshape(padded_rows, -1, 2).mean(axis=2) for c in (1, 2)]
    blocks = []
    for top in range(0, padded_rows, 8):
        for mcu in range(padded_columns // mcu_width):
            for component, (h, _) in enumerate(sampling):
                for step in range(h):
                    left = (mcu * h + step) * 8
                    blocks.append((component, planes[component][top : top + 8, left : left + 8]))
    return blocks


def _entropy_coded(
    blocks: list[tuple[int, np.ndarray]], dc_codes: dict[int, str], ac_codes: dict[int, str]
) -> bytes:
    """Huffman-code quantised DCT coefficients (F.1.2), pad with 1-bits, stuff 0xFF bytes."""
    bits: list[str] = []
    predictors = [0, 0, 0]
    for component, block in blocks:
        coefficients = np.rint((_DCT @ block @ _DCT.T).flatten()[_ZIGZAG] / _QUANT).astype(int)
        difference = int(coefficients[0]) - predictors[component]
        predictors[component] = int(coefficients[0])
        bits += [dc_codes[_category(difference)], _amplitude(difference)]
        run = 0
        for value in (int(v) for v in coefficients[1:]):
            if value == 0:
                run += 1
                continue
            bits += [ac_codes[0xF0]] * (run // 16)
            bits += [ac_codes[(run % 16) << 4 | _category(value)], _amplitude(value)]
            run = 0
        if run:
            bits.append(ac_codes[0x00])  # end of block
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = int(stream, 2).to_bytes(len(stream) // 8, "big")
    return data.replace(b"\xff", b"\xff\x00")


def _category(value: int) -> int:
    return abs(value).bit_length()


def _amplitude(value: int) -> str:
    """F.1.2.1.1: the low bits of a positive value, of value - 1 for a negative one."""
    size = _category(value)
    return format(value if value >= 0 else value + (1 << size) - 1, f"0{size}b") if size else ""
