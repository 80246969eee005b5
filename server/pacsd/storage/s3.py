"""Instance files as objects in an S3-compatible bucket (`storage.backend: s3`).

The guarantees are the filesystem backend's: an object is complete in the bucket before
`keep`/`write` return, so before the archive writes its index row and before the peer hears
success. Each upload carries the SHA-256 pacsd computed while the bytes arrived (the whole
object's for a single PUT, each part's for a multipart upload above
`multipart_threshold`); the service refuses bytes that do not match, and the object's size
is checked with a HEAD afterwards. A failed multipart upload is aborted. The local spool file
is removed only once the object is there.

Reads are ranged GETs: `open` returns a seekable reader with a read-ahead buffer of
`READ_AHEAD` bytes, so nothing is held whole in memory (C-GET and C-MOVE sub-operations sent as
stored, WADO-RS); `local_copy` fetches an object into the work folder `.tmp/` in blocks for
code that needs a path (transcoding, bulk data removal, frame extraction).

Object keys are `prefix` + the relative path a filesystem root would have. boto3 is imported
here only: a filesystem install never loads it. Any failure to reach the service becomes
OutOfResources (0xA700: the peer retries), never a success.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pacsd.errors import OutOfResources
from pacsd.storage.base import QUARANTINE_PREFIX, StorageUnavailable, StoredFile, StoredObject
from pacsd.storage.filesystem import (
    FULL_DISK_ERRNOS,
    SPOOL_DIR,
    TMP_DIR,
    prepare_work_folders,
    write_new_file,
)

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

    from pacsd.settings import S3Settings
    from pacsd.storage.incoming import IncomingFile

READ_AHEAD = 4 * 1024 * 1024
_COPY_CHUNK = 1 << 20
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _unavailable(exc: Exception) -> OutOfResources:
    return OutOfResources(f"object storage unavailable: {type(exc).__name__}: {exc}")


def _is_not_found(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND


def make_client(settings: S3Settings) -> S3Client:
    """A boto3 S3 client for `settings` (credentials from the variables they name)."""
    key_id: str | None = None
    secret: str | None = None
    if settings.access_key_id_env and settings.secret_access_key_env:
        try:
            key_id = os.environ[settings.access_key_id_env]
            secret = os.environ[settings.secret_access_key_env]
        except KeyError as missing:
            raise OutOfResources(f"storage.s3: environment variable {missing} is not set") from None
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    client: S3Client = boto3.client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region,
        verify=settings.verify_tls,
        config=config,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )
    return client


class S3Store:
    """Objects in one bucket under one key prefix; a local work folder for spool and temp."""

    def __init__(self, root: Path, min_free_space: int, settings: S3Settings) -> None:
        self.root = root.resolve()
        self.min_free_space = min_free_space
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        self.client = make_client(settings)

    @property
    def tmp_dir(self) -> Path:
        """Where files are written (or fetched) before they are uploaded (or read)."""
        return self.root / TMP_DIR

    @property
    def spool_dir(self) -> Path:
        """Where incoming data sets are received before they are checked and uploaded."""
        return self.root / SPOOL_DIR

    def key(self, relative_path: str) -> str:
        """The object key of a stored file; refuses a path that would leave the prefix."""
        relative = PurePosixPath(relative_path)
        if relative.is_absolute() or not relative.parts or ".." in relative.parts:
            raise ValueError(f"path {relative_path!r} is outside the storage prefix")
        return self.prefix + relative.as_posix()

    def prepare(self) -> int:
        """Create the local work folders and remove their leftovers."""
        return prepare_work_folders(self.tmp_dir, self.spool_dir)

    def ensure_free_space(self, incoming_bytes: int) -> None:
        """The local work folder must have room for a copy (an import's temporary file)."""
        free = shutil.disk_usage(self.root).free
        if free - incoming_bytes < self.min_free_space:
            raise OutOfResources(f"work folder has {free // 1_000_000} MB free, below the minimum")

    def keep(self, incoming: IncomingFile, directory: PurePosixPath, stem: str) -> StoredFile:
        """Upload a received file (its SHA-256 known from receiving), then remove it locally."""
        try:
            incoming.close()  # never fsynced: the upload is what makes it durable
        except OSError as exc:  # the spool file, created now when memory held its bytes
            if exc.errno in FULL_DISK_ERRNOS:
                raise OutOfResources("work folder is full") from exc
            raise
        relative = (directory / f"{stem}-{uuid.uuid4().hex[:16]}.dcm").as_posix()
        self._upload(incoming.path, relative, incoming.size, incoming.sha256)
        incoming.path.unlink(missing_ok=True)
        incoming.moved()
        return StoredFile(relative, incoming.size, incoming.sha256)

    def write(
        self, directory: PurePosixPath, stem: str, head: bytes, source: BinaryIO, offset: int
    ) -> StoredFile:
        """Write `head` + `source[offset:]` to a local temporary file, then upload it."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        temp_path = self.tmp_dir / f"{uuid.uuid4().hex}.part"
        relative = (directory / f"{stem}-{uuid.uuid4().hex[:16]}.dcm").as_posix()
        try:
            # No fsync: the upload, checked by its checksums and a HEAD, is what is durable.
            size, sha256 = write_new_file(temp_path, head, source, offset, sync=False)
            self._upload(temp_path, relative, size, sha256)
        finally:
            temp_path.unlink(missing_ok=True)
        return StoredFile(relative, size, sha256)

    def _upload(self, path: Path, relative: str, size: int, sha256: str) -> None:
        """PUT (or multipart-upload) `path` as `relative`, checksummed; then HEAD its size."""
        key = self.key(relative)
        try:
            if size <= int(self.settings.multipart_threshold):
                with path.open("rb") as body:
                    self.client.put_object(
                        Bucket=self.bucket,
                        Key=key,
                        Body=body,
                        ContentLength=size,
                        ChecksumSHA256=_b64(bytes.fromhex(sha256)),
                    )
            else:
                self._multipart(path, key)
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable(exc) from exc
        if int(head["ContentLength"]) != size:
            self._delete_quietly(key)
            raise OutOfResources(f"object storage kept {head['ContentLength']} of {size} bytes")

    def _multipart(self, path: Path, key: str) -> None:
        """A multipart upload, each part with its SHA-256; aborted on any failure."""
        chunk_size = int(self.settings.multipart_chunk_size)
        upload = self.client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ChecksumAlgorithm="SHA256"
        )
        upload_id = upload["UploadId"]
        parts: list[CompletedPartTypeDef] = []
        try:
            with path.open("rb") as source:
                number = 1
                while chunk := source.read(chunk_size):  # one part in memory at a time
                    checksum = _b64(hashlib.sha256(chunk).digest())
                    answer = self.client.upload_part(
                        Bucket=self.bucket,
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=checksum,
                    )
                    parts.append(
                        {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}
                    )
                    number += 1
                    del chunk
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            with contextlib.suppress(BotoCoreError, ClientError):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    def remove(self, relative_path: str) -> None:
        """DeleteObject (a missing object is fine). OSError when the service is unreachable."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(relative_path))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"object storage: {exc}") from exc

    def _delete_quietly(self, key: str) -> None:
        with contextlib.suppress(BotoCoreError, ClientError):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def local_path(self, relative_path: str) -> None:
        """None: objects are never local files."""
        return None

    def size(self, relative_path: str) -> int:
        """The object's size (FileNotFoundError when there is none, OSError when unreachable)."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(relative_path))
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(relative_path) from None
            raise StorageUnavailable(f"object storage: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object storage: {exc}") from exc
        return int(head["ContentLength"])

    def exists(self, relative_path: str) -> bool:
        """Whether the object is there."""
        try:
            self.size(relative_path)
        except FileNotFoundError:
            return False
        return True

    def open(self, relative_path: str) -> BinaryIO:
        """A seekable reader doing ranged GETs, `READ_AHEAD` bytes buffered."""
        raw = RangedObject(self.client, self.bucket, self.key(relative_path))
        raw.length = self.size(relative_path)
        return io.BufferedReader(raw, buffer_size=READ_AHEAD)

    @contextlib.contextmanager
    def local_copy(self, relative_path: str) -> Iterator[Path]:
        """The object fetched into `.tmp/` block by block, removed when the context ends."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        temp_path = self.tmp_dir / f"{uuid.uuid4().hex}.get"
        try:
            with self.open(relative_path) as source, temp_path.open("wb") as out:
                while chunk := source.read(_COPY_CHUNK):
                    out.write(chunk)
            yield temp_path
        finally:
            temp_path.unlink(missing_ok=True)

    def stored_objects(self) -> Iterator[StoredObject]:
        """Every object under the prefix (ListObjectsV2, page by page), quarantine left out."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for entry in page.get("Contents", []):
                    relative = entry["Key"][len(self.prefix) :]
                    if relative.startswith(QUARANTINE_PREFIX):
                        continue
                    yield StoredObject(relative, entry["LastModified"].timestamp())
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"object storage: {exc}") from exc

    def quarantine(self, relative_path: str, target: str) -> None:
        """Move an object to `target` (copy, then delete the original)."""
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=self.key(target),
                CopySource={"Bucket": self.bucket, "Key": self.key(relative_path)},
            )
            self.client.delete_object(Bucket=self.bucket, Key=self.key(relative_path))
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"object storage: {exc}") from exc

    def free_space(self) -> None:
        """None: a bucket has no free space to report."""
        return None

    def check_ready(self) -> None:
        """HEAD the bucket; OSError when it does not answer."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise StorageUnavailable(f"object storage: {exc}") from exc


class RangedObject(io.RawIOBase):
    """One object as a raw, seekable stream: each read is one ranged GET.

    `name` is its URL, never a local path: pydicom takes an `io.BufferedReader`'s name for a
    file's (FileDataset), so a value it would read later by that name (a deferred read) fails
    loudly instead of opening something local.
    """

    def __init__(self, client: S3Client, bucket: str, key: str) -> None:
        super().__init__()
        self.client = client
        self.bucket = bucket
        self.key = key
        self.name = f"s3://{bucket}/{key}"
        self.length = 0
        self.position = 0

    def readable(self) -> bool:
        """Always."""
        return True

    def seekable(self) -> bool:
        """Always."""
        return True

    def tell(self) -> int:
        """The position."""
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move the position (no request)."""
        if whence == io.SEEK_SET:
            self.position = offset
        elif whence == io.SEEK_CUR:
            self.position += offset
        else:
            self.position = self.length + offset
        self.position = max(0, self.position)
        return self.position

    def readinto(self, buffer: Any) -> int:
        """GET bytes [position, position + len(buffer)) into `buffer`."""
        view = memoryview(buffer).cast("B")
        end = min(self.length, self.position + len(view))
        if end <= self.position:
            return 0
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.key, Range=f"bytes={self.position}-{end - 1}"
            )
            body = answer["Body"]
            filled = 0
            while filled < end - self.position:
                data = body.read(min(_COPY_CHUNK, end - self.position - filled))
                if not data:
                    break
                view[filled : filled + len(data)] = data
                filled += len(data)
            body.close()
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(self.key) from None
            raise StorageUnavailable(f"object storage: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"object storage: {exc}") from exc
        if filled != end - self.position:
            raise OSError(f"{self.key}: shorter than its size")
        self.position += filled
        return filled
