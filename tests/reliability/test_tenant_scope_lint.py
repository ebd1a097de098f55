"""Lint: every query on a tenant-owned table starts from the tenant-scoped statement.

A tenant-owned table is one with a ``tenant_id`` column. In bds_service, api and worker, a
``select``/``update``/``delete`` that names such a model, or ``session.get``/``session.query``
of one, is only allowed inside :meth:`TenantScopedRepository.scoped` (which uses
``self.model``, so it names no model and is never flagged) or in a function listed in
``UNSCOPED_QUERIES`` below with the reason it may read across tenants (a background task
acting for the system by id, authentication by key hash, an admin read). A new unscoped query
anywhere else fails this test: either build it from ``Repository(session, tenant_id).scoped()``
or add it here, where a reviewer sees it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from bds_service.models import Base

REPO_ROOT = Path(__file__).resolve().parents[2]
SCANNED_PACKAGES = ("bds_service", "api", "worker")
STATEMENT_BUILDERS = {"select", "update", "delete"}
SESSION_READERS = {"get", "query", "get_one"}

# (file relative to the repository root, function qualname or "*" for the whole file)
# -> why it may skip the scope.
UNSCOPED_QUERIES: dict[tuple[str, str], str] = {
    ("bds_service/admin/repository.py", "*"): (
        "the provider's dashboard reads across tenants; only admin routes reach it"
    ),
    ("bds_service/dataset_reviews/repository.py", "_reviewed_files_statement"): (
        "a job create's files with their reviews, built once per process as a Core statement "
        "(no session to scope from); its first condition is File.tenant_id = :tenant_id"
    ),
    ("bds_service/dataset_reviews/repository.py", "reviews_by_file"): (
        "provider dashboard and workers: the reviews of given files of any tenant"
    ),
    ("bds_service/tenants/web_sessions.py", "resolve_session"): (
        "authentication: finds a browser session by its token's HMAC"
    ),
    ("bds_service/tenants/web_sessions.py", "end_session"): (
        "logout of the session the caller's own cookie resolved to"
    ),
    ("bds_service/tenants/repository.py", "find_active_key"): (
        "authentication: finds the key by its HMAC before any tenant is known"
    ),
    ("bds_service/jobs/repository.py", "_find_key_statement"): (
        "an Idempotency-Key by its primary key (tenant_id, key): the caller's tenant is bound "
        "at execution (the statement is built once)"
    ),
    ("bds_service/audit.py", "list_for_tenant"): (
        "admin read of one tenant's audit rows; filters on AuditLog.tenant_id itself"
    ),
    ("bds_service/jobs/repository.py", "load_job_for_task"): "worker task: loads a job by id",
    ("bds_service/jobs/repository.py", "jobs_waiting_on_file"): (
        "worker task: jobs waiting on a file it just validated"
    ),
    ("bds_service/jobs/repository.py", "transition"): (
        "worker and service state changes by job id (callers loaded the job scoped or by id)"
    ),
    ("bds_service/jobs/repository.py", "claim"): "worker task: compare-and-set claim by job id",
    ("bds_service/jobs/repository.py", "why_not_claimable"): (
        "worker task: whether a delivered job id waits for a worker"
    ),
    ("bds_service/jobs/repository.py", "renew_lease"): "worker heartbeat by job id and owner",
    ("bds_service/jobs/repository.py", "expired_leases"): "lease reaper: all tenants' jobs",
    ("bds_service/jobs/repository.py", "expire_leases_of_processes"): (
        "a stalled worker ends the leases of its own pool processes before killing them"
    ),
    ("bds_service/files/repository.py", "load_file_for_task"): "worker task: loads a file by id",
    ("bds_service/files/service.py", "_ScoringClaimKeeper._run"): (
        "worker: renews the scoring claim of the file it scores, by id and claim token"
    ),
    ("bds_service/dispatch.py", "*"): (
        "dispatch sweep (beat): all tenants' jobs and files waiting for a worker"
    ),
    ("bds_service/jobs/runner.py", "_job_state"): "worker: its own job's status by id",
    ("bds_service/jobs/runner.py", "JobProgress.on_resume"): (
        "worker: the last step reported for the job it holds"
    ),
    ("bds_service/jobs/runner.py", "JobProgress.on_checkpoint"): (
        "worker: checkpoints of the job it holds"
    ),
}


def tenant_owned_models() -> set[str]:
    """Names of the mapped classes whose table has a ``tenant_id`` column."""
    return {
        mapper.class_.__name__
        for mapper in Base.registry.mappers
        if "tenant_id" in mapper.local_table.columns
    }


@dataclass(frozen=True)
class UnscopedQuery:
    """A query on a tenant-owned model outside the scoped statement."""

    path: str
    function: str
    line: int
    model: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}(): query on {self.model}"


def _names_in(node: ast.AST) -> set[str]:
    """Bare names used in an expression (``FineTuningJob``, ``FineTuningJob.status``)."""
    return {child.id for child in ast.walk(node) if isinstance(child, ast.Name)}


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


class _Finder(ast.NodeVisitor):
    def __init__(self, path: str, owned: set[str]) -> None:
        self.path = path
        self.owned = owned
        self.scope: list[str] = []
        self.found: list[UnscopedQuery] = []

    def _visit_scope(self, node: ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_ClassDef = _visit_scope
    visit_FunctionDef = _visit_scope
    visit_AsyncFunctionDef = _visit_scope

    def visit_Call(self, node: ast.Call) -> None:
        name = _called_name(node)
        named: set[str] = set()
        if name in STATEMENT_BUILDERS and isinstance(node.func, ast.Name):
            for argument in node.args:
                named |= _names_in(argument) & self.owned
        elif name in SESSION_READERS and isinstance(node.func, ast.Attribute) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name) and first.id in self.owned:
                named.add(first.id)
        for model in sorted(named):
            self.found.append(
                UnscopedQuery(self.path, ".".join(self.scope) or "<module>", node.lineno, model)
            )
        self.generic_visit(node)


def find_unscoped_queries(source: str, path: str, owned: set[str]) -> list[UnscopedQuery]:
    """Queries in ``source`` that name a tenant-owned model directly."""
    finder = _Finder(path, owned)
    finder.visit(ast.parse(source, filename=path))
    return finder.found


def _scanned_files() -> list[Path]:
    return sorted(
        path
        for package in SCANNED_PACKAGES
        for path in (REPO_ROOT / package).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def test_queries_on_tenant_owned_tables_start_from_the_scoped_statement() -> None:
    owned = tenant_owned_models()
    assert {"File", "FineTuningJob", "JobEvent", "JobCheckpoint", "ApiKey"} <= owned
    violations = [
        query
        for path in _scanned_files()
        for query in find_unscoped_queries(
            path.read_text(), path.relative_to(REPO_ROOT).as_posix(), owned
        )
        if (query.path, query.function) not in UNSCOPED_QUERIES
        and (query.path, "*") not in UNSCOPED_QUERIES
    ]
    assert not violations, (
        "queries on tenant-owned tables that do not start from a scoped repository "
        "statement (use Repository(session, tenant_id).scoped(), or list the function in "
        "UNSCOPED_QUERIES with a reason):\n" + "\n".join(map(str, violations))
    )


def test_the_lint_catches_an_unscoped_read() -> None:
    source = """
from sqlalchemy import select
from bds_service.models import FineTuningJob, File

def get_job(session, job_id):
    return session.scalars(select(FineTuningJob).where(FineTuningJob.id == job_id)).one()

def get_file(session, file_id):
    return session.get(File, file_id)

class JobRepository:
    def scoped(self):
        return select(self.model).where(self.model.tenant_id == self.tenant_id)

    def get(self, job_id):
        return self.session.scalars(self.scoped().where(self.model.id == job_id)).one()
"""
    found = find_unscoped_queries(source, "example.py", tenant_owned_models())
    assert [(query.function, query.model) for query in found] == [
        ("get_job", "FineTuningJob"),
        ("get_file", "File"),
    ]
