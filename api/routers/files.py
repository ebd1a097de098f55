"""``/v1/files``: upload, list, retrieve, delete, content, and the dataset's safety report."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.deps import AppSettings, CurrentPrincipal, DbSession, ReadSession, RequestId, Storage
from api.schemas.common import (
    ERROR_RESPONSES,
    ErrorResponse,
    Limit,
    ListResponse,
    json_response,
    list_response,
)
from api.schemas.files import FileDeleted, FileObject, FileSafetyReport
from api.uploads import receive_upload
from bds_service.db import call_after_rollback
from bds_service.errors import InvalidRequestError
from bds_service.files import service as files
from bds_service.files.states import UPLOAD_PURPOSES
from bds_service.storage import file_key

router = APIRouter(prefix="/v1/files", tags=["files"], responses=ERROR_RESPONSES)

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": [p.value for p in UPLOAD_PURPOSES]},
                    },
                }
            }
        },
    }
}


@router.post(
    "",
    response_model=FileObject,
    openapi_extra=_UPLOAD_BODY,
    responses={413: {"description": "file over the size limit"}},
)
async def upload_file(
    request: Request,
    session: DbSession,
    principal: CurrentPrincipal,
    settings: AppSettings,
    storage: Storage,
    request_id: RequestId,
) -> FileObject:
    """Upload a JSONL dataset (multipart: ``file`` and ``purpose``), streamed and size-capped.

    With synchronous validation (the default) a bad file is refused with a 400 that names the
    first problem's line and field, and nothing is stored.
    """
    limits = principal.limit_overrides.resolve(settings)
    file_id = files.new_file_id()
    key = file_key(principal.tenant_id, file_id)
    upload = await receive_upload(
        request,
        open_sink=lambda: storage.open_upload(key, limits.max_file_bytes),
        max_file_bytes=limits.max_file_bytes,
    )
    assert upload.stored is not None
    # From here on, any failure (including the commit after this function) removes the bytes.
    call_after_rollback(session, lambda: storage.delete(key))
    filename = files.check_upload_fields(upload.filename, upload.fields.get("purpose"))
    if upload.stored.bytes == 0:
        raise InvalidRequestError("the file is empty", code="empty_file", param="file")
    report = None
    if settings.validate_uploads_synchronously:
        report = await run_in_threadpool(
            files.validate_content, storage.path(key), settings, limits.max_examples
        )
        if not report.ok:
            raise files.invalid_file_error(report)
    row = await run_in_threadpool(
        files.register_upload,
        session,
        actor=principal.actor(request_id),
        tenant_id=principal.tenant_id,
        file_id=file_id,
        filename=filename,
        purpose=upload.fields["purpose"],
        stored=upload.stored,
        report=report,
    )
    return FileObject.from_row(row)


@router.get("", response_model=ListResponse[FileObject])
def list_files(
    session: ReadSession,
    principal: CurrentPrincipal,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Limit] = 20,
    order: Literal["asc", "desc"] = "desc",
    purpose: Annotated[str | None, Query(max_length=32)] = None,
) -> Response:
    """Your files, newest first by default; pass the last id as ``after`` for the next page."""
    page = files.list_files(
        session, principal.tenant_id, after=after, limit=limit, order=order, purpose=purpose
    )
    data = [FileObject.from_row(row) for row in page.items]
    return json_response(list_response(data, has_more=page.has_more))


@router.get("/{file_id}", response_model=FileObject)
def retrieve_file(file_id: str, session: DbSession, principal: CurrentPrincipal) -> FileObject:
    """One file, with its validation status and report."""
    return FileObject.from_row(files.get_file(session, principal.tenant_id, file_id))


@router.delete(
    "/{file_id}",
    response_model=FileDeleted,
    responses={409: {"model": ErrorResponse, "description": "an unfinished job uses the file"}},
)
def delete_file(
    file_id: str,
    session: DbSession,
    principal: CurrentPrincipal,
    storage: Storage,
    request_id: RequestId,
) -> FileDeleted:
    """Delete a file's content; refused while an unfinished job uses it."""
    files.delete_file(
        session,
        principal.tenant_id,
        file_id,
        actor=principal.actor(request_id),
        storage=storage,
    )
    return FileDeleted(id=file_id, deleted=True)


@router.get(
    "/{file_id}/content",
    response_class=FileResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(
    file_id: str,
    session: DbSession,
    principal: CurrentPrincipal,
    storage: Storage,
    request_id: RequestId,
) -> FileResponse:
    """The file's bytes as uploaded; every download is audited."""
    file, path = files.content_for_download(
        session, principal.tenant_id, file_id, storage, principal.actor(request_id)
    )
    return FileResponse(path, media_type="application/octet-stream", filename=file.filename)


@router.get("/{file_id}/safety_report", response_model=FileSafetyReport)
def file_safety_report(
    file_id: str, session: DbSession, principal: CurrentPrincipal
) -> FileSafetyReport:
    """The amortized scheduler's per-dataset report (poll while ``pending``/``running``)."""
    return FileSafetyReport.from_row(files.get_file(session, principal.tenant_id, file_id))
