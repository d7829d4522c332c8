"""Reading multipart uploads into memory, under byte limits, without touching the disk.

Starlette's own form parser spools every file part over 1 MiB to a temporary file; photos must
never be written anywhere, so the body is parsed here with ``python_multipart``'s streaming
parser and each photo is kept in a ``bytearray``. The limits (bytes, parts, header sizes and
time) are enforced while the body streams in, so an oversized, over-long or trickled request is
refused before it is read in full.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from python_multipart.multipart import MultipartParser, parse_options_header

from mpoxscan.web.api_errors import ApiError

#: The form field that carries photos (``<input name="file" multiple>``, ``curl -F file=@x``).
FILE_FIELD = "file"
#: Text fields are short flags (``explain``, ``lang``); longer ones are dropped.
_MAX_FIELD_BYTES = 1024
_MAX_FIELDS = 20
#: A part's headers are a Content-Disposition and a Content-Type: a few hundred bytes.
_MAX_PART_HEADER_BYTES = 8 * 1024
#: RFC 2046 allows 70 characters; some clients use a little more.
_MAX_BOUNDARY_BYTES = 200


@dataclass
class Upload:
    """One photo part of a request, held in memory.

    Attributes:
        size: how many bytes the part had.
        too_large: the part was over the per-file limit (its bytes were discarded).
        chunks: the pieces received, as they came. They are joined into one ``bytes`` on the
            first read of ``data``, in the worker thread that decodes the photo: joining
            10 MB is a 10 MB copy into freshly mapped memory, 10-20 ms that would hold up
            every other request (health checks included) if done on the event loop's thread
            when the part ends.
    """

    size: int = 0
    too_large: bool = False
    chunks: list[bytes] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, data: bytes) -> Upload:
        """An upload of these bytes (for callers that already hold a whole file)."""
        return cls(size=len(data), chunks=[data])

    @property
    def data(self) -> bytes:
        """The bytes received (empty when ``too_large``), joined on first use."""
        if not self.chunks:
            return b""
        if len(self.chunks) > 1 or not isinstance(self.chunks[0], bytes):
            self.chunks[:] = [b"".join(self.chunks)]
        return self.chunks[0]


@dataclass
class UploadForm:
    """The photos and the short text fields of a multipart request."""

    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)
    #: Names of text parts not kept: over the size limit, past the count, or sent as a file.
    dropped: set[str] = field(default_factory=set)


@dataclass
class _Part:
    name: str = ""
    has_filename: bool = False
    filename_empty: bool = False
    upload: Upload | None = None
    text: bytearray | None = None


class _FormCollector:
    """``python_multipart`` callbacks that collect parts into an ``UploadForm``."""

    def __init__(self, *, max_files: int, max_file_bytes: int, max_parts: int):
        self.max_files = max_files
        self.max_file_bytes = max_file_bytes
        self.max_parts = max_parts
        self.form = UploadForm()
        self.finished = False
        self._parts = 0
        self._header_bytes = 0
        self._part = _Part()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._disposition = b""

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self.max_parts:
            raise ApiError(
                "too_many_parts",
                f"The form has more than {self.max_parts} parts; send one part per photo "
                '(named "file") and nothing else.',
            )
        self._part = _Part()
        self._disposition = b""
        self._header_bytes = 0

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_header_bytes(end - start)
        self._header_value += data[start:end]

    def _count_header_bytes(self, length: int) -> None:
        self._header_bytes += length
        if self._header_bytes > _MAX_PART_HEADER_BYTES:
            raise ApiError(
                "malformed_request",
                f"A multipart part has over {_MAX_PART_HEADER_BYTES} bytes of headers; "
                "send photos as ordinary form parts.",
            )

    def on_header_end(self) -> None:
        if bytes(self._header_name).lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_name = bytearray()
        self._header_value = bytearray()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if b"name" not in options:
            raise ApiError(
                "malformed_request",
                "A multipart part has no Content-Disposition name; "
                'send photos as parts named "file".',
            )
        part = self._part
        part.name = options[b"name"].decode("utf-8", "replace")
        part.has_filename = b"filename" in options
        part.filename_empty = part.has_filename and not options[b"filename"]
        if part.name == FILE_FIELD:
            part.upload = Upload()
        elif not part.has_filename and len(self.form.fields) < _MAX_FIELDS:
            part.text = bytearray()
        else:
            self.form.dropped.add(part.name)

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        length = end - start
        if part.upload is not None:
            upload = part.upload
            upload.size += length
            if upload.size > self.max_file_bytes:
                # Keep counting (the entry reports the size) but stop holding the bytes.
                upload.too_large = True
                upload.chunks.clear()
            else:
                # Slicing a whole chunk (the usual case) copies nothing.
                upload.chunks.append(data[start:end])
        elif part.text is not None:
            if len(part.text) + length > _MAX_FIELD_BYTES:
                part.text = None
                self.form.dropped.add(part.name)
            else:
                part.text += data[start:end]

    def on_part_end(self) -> None:
        part = self._part
        if part.upload is not None:
            # A browser sends an empty, unnamed part for a file input left empty.
            if part.filename_empty and part.upload.size == 0:
                return
            if len(self.form.files) >= self.max_files:
                raise ApiError(
                    "too_many_files",
                    f"At most {self.max_files} photos can be sent at once; "
                    "send fewer photos (of one person) per request.",
                )
            self.form.files.append(part.upload)
        elif part.text is not None:
            self.form.fields[part.name] = part.text.decode("utf-8", "replace")

    def on_end(self) -> None:
        self.finished = True


def check_content_length(header: str | None, max_request_bytes: int) -> None:
    """Refuse a request whose declared ``Content-Length`` is over the limit, before reading it.

    Raises:
        ApiError: ``request_too_large``.
    """
    if header is None:
        return
    try:
        declared = int(header)
    except ValueError as exc:
        raise ApiError("malformed_request", "The Content-Length header is not a number.") from exc
    if declared > max_request_bytes:
        raise _request_too_large(max_request_bytes)


def multipart_boundary(content_type: str | None) -> bytes:
    """Return the boundary of a ``multipart/form-data`` content type.

    Raises:
        ApiError: ``unsupported_media_type`` for any other content type, ``malformed_request``
            when the boundary is missing.
    """
    media_type, params = parse_options_header(content_type or "")
    if media_type != b"multipart/form-data":
        raise ApiError(
            "unsupported_media_type",
            'Send photos as multipart/form-data with one part named "file" per photo '
            "(for example: curl -F file=@photo.jpg).",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError("malformed_request", "The multipart Content-Type has no boundary.")
    if len(boundary) > _MAX_BOUNDARY_BYTES:
        raise ApiError(
            "malformed_request",
            f"The multipart boundary is over {_MAX_BOUNDARY_BYTES} characters; RFC 2046 allows 70.",
        )
    return boundary


async def read_upload_form(
    content_type: str | None,
    chunks: AsyncIterator[bytes],
    *,
    max_files: int,
    max_file_bytes: int,
    max_request_bytes: int,
    max_parts: int = 40,
    max_seconds: float = 120.0,
) -> UploadForm:
    """Parse a ``multipart/form-data`` body into memory.

    Args:
        content_type: the request's ``Content-Type`` header.
        chunks: the body as it arrives (``request.stream()``).
        max_files: most ``file`` parts accepted.
        max_file_bytes: a larger ``file`` part is kept as ``Upload(too_large=True)`` with no
            bytes, so one oversized photo among several can be reported on its own.
        max_request_bytes: the whole body may not exceed this.
        max_parts: most parts of any kind.
        max_seconds: the whole body must arrive within this time.

    Returns:
        The photos in the order sent and the short text fields.

    Raises:
        ApiError: ``unsupported_media_type``, ``malformed_request``, ``request_too_large``,
            ``too_many_files``, ``too_many_parts`` or ``upload_timeout``.
    """
    boundary = multipart_boundary(content_type)
    collector = _FormCollector(
        max_files=max_files, max_file_bytes=max_file_bytes, max_parts=max_parts
    )
    try:
        with anyio.fail_after(max_seconds):
            await _feed(MultipartParser(boundary, collector.callbacks()), chunks, max_request_bytes)
    except TimeoutError as exc:
        raise ApiError(
            "upload_timeout",
            f"The upload took longer than {max_seconds:g} seconds; send smaller photos or "
            "retry on a faster connection.",
        ) from exc
    except ValueError as exc:  # python_multipart's parse errors are ValueErrors
        raise ApiError("malformed_request", "The multipart body could not be parsed.") from exc
    if not collector.finished:
        raise ApiError(
            "malformed_request", "The multipart body ended early; the upload was cut off."
        )
    return collector.form


async def _feed(
    parser: MultipartParser, chunks: AsyncIterator[bytes], max_request_bytes: int
) -> None:
    """Write the body into the parser as it arrives, counting bytes against the limit."""
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_request_bytes:
            raise _request_too_large(max_request_bytes)
        parser.write(chunk)
    parser.finalize()


def _request_too_large(max_request_bytes: int) -> ApiError:
    return ApiError(
        "request_too_large",
        f"The request is over the {max_request_bytes / 1024 / 1024:.0f} MiB limit; "
        "send fewer or smaller photos.",
    )
