"""Streaming multipart upload: the file part goes straight to storage, hashed and size-capped.

Starlette's form parser spools file parts to disk without a size limit before the endpoint runs;
this reader instead feeds ``request.stream()`` through python-multipart and writes the file part
chunk by chunk into an :class:`~bds_service.storage.UploadSink`, which refuses to grow past the
cap. Small text fields (``purpose``) are kept in memory with their own small cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from bds_service.errors import InvalidRequestError, PayloadTooLargeError
from bds_service.storage import StoredObject, UploadSink

# Room for multipart boundaries, part headers and the small fields around the file.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
MAX_FIELD_BYTES = 1024


@dataclass
class ReceivedUpload:
    """The parsed form: text fields, the file's client name and what was stored."""

    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    stored: StoredObject | None = None


class _FormReader:
    def __init__(
        self, open_sink: Callable[[], UploadSink], file_field: str, text_fields: set[str]
    ) -> None:
        self.open_sink = open_sink
        self.file_field = file_field
        self.text_fields = text_fields
        self.result = ReceivedUpload()
        self.sink: UploadSink | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_value = bytearray()
        self.ended = False

    # python-multipart callbacks -----------------------------------------------------------
    def on_part_begin(self) -> None:
        self._headers = {}
        self._part_name = None
        self._part_is_file = False
        self._field_value = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise InvalidRequestError(
                "every multipart part needs 'Content-Disposition: form-data; name=...'",
                code="invalid_multipart",
            )
        name = options[b"name"].decode("utf-8", "replace")
        self._part_name = name
        if name == self.file_field:
            if self.sink is not None:
                raise InvalidRequestError(
                    "send exactly one file per upload", code="too_many_files", param="file"
                )
            filename = options.get(b"filename")
            try:
                self.result.filename = filename.decode("utf-8") if filename else None
            except UnicodeDecodeError as error:
                raise InvalidRequestError(
                    "the file's name is not valid UTF-8; send a plain UTF-8 name",
                    code="invalid_filename",
                    param="file",
                ) from error
            self._part_is_file = True
            self.sink = self.open_sink()
        elif name not in self.text_fields:
            raise InvalidRequestError(
                f"unknown form field {name[:64]!r}; expected 'file' and 'purpose'",
                code="unknown_parameter",
                param=name[:64],
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part_is_file:
            assert self.sink is not None
            self.sink.write(chunk)
            return
        self._field_value += chunk
        if len(self._field_value) > MAX_FIELD_BYTES:
            raise InvalidRequestError(
                f"form field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes",
                code="invalid_value",
                param=self._part_name,
            )

    def on_end(self) -> None:
        self.ended = True

    def on_part_end(self) -> None:
        if not self._part_is_file and self._part_name is not None:
            if self._part_name in self.result.fields:
                raise InvalidRequestError(
                    f"form field {self._part_name!r} is sent more than once; send it once",
                    code="duplicate_parameter",
                    param=self._part_name,
                )
            try:
                self.result.fields[self._part_name] = self._field_value.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidRequestError(
                    f"form field {self._part_name!r} is not UTF-8",
                    code="invalid_value",
                    param=self._part_name,
                ) from error


async def receive_upload(
    request: Request,
    *,
    open_sink: Callable[[], UploadSink],
    max_file_bytes: int,
    file_field: str = "file",
    text_fields: frozenset[str] = frozenset({"purpose"}),
) -> ReceivedUpload:
    """Read a multipart/form-data body, storing its file part through ``open_sink``.

    On any error the partial file is removed and nothing is left in storage.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise InvalidRequestError(
            "uploads must be sent as multipart/form-data with a 'file' part and a 'purpose' field",
            code="invalid_content_type",
        )
    max_body_bytes = max_file_bytes + MULTIPART_OVERHEAD_BYTES
    declared_length = request.headers.get("content-length")
    if (
        declared_length is not None
        and declared_length.isdigit()
        and int(declared_length) > max_body_bytes
    ):
        raise PayloadTooLargeError(
            f"the upload is larger than the {max_file_bytes}-byte limit",
            code="file_too_large",
            param="file",
        )

    reader = _FormReader(open_sink, file_field, set(text_fields))
    parser = MultipartParser(
        boundary,
        callbacks={
            "on_part_begin": reader.on_part_begin,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
            "on_end": reader.on_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_body_bytes:
                raise PayloadTooLargeError(
                    f"the upload is larger than the {max_file_bytes}-byte limit",
                    code="file_too_large",
                    param="file",
                )
            parser.write(chunk)
        parser.finalize()
        if not reader.ended:
            # A body cut short (client or proxy gone mid-upload): never store a partial file.
            raise InvalidRequestError(
                "the multipart body ended before its closing boundary: the upload was cut "
                "short; send the whole file again",
                code="incomplete_upload",
                param="file",
            )
        if reader.sink is None:
            raise InvalidRequestError(
                "the form has no 'file' part", code="missing_required_parameter", param="file"
            )
        reader.result.stored = reader.sink.commit()
    except Exception as error:
        if reader.sink is not None:
            reader.sink.abort()
        if isinstance(error, InvalidRequestError | PayloadTooLargeError):
            raise
        raise InvalidRequestError(
            f"the multipart body could not be parsed: {error}", code="invalid_multipart"
        ) from error
    return reader.result
