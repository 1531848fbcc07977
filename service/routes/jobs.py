"""Jobs over REST: every long task (ingestion, rebuild, evaluation, training) is one."""

import asyncio

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse

from adapters_store import corpus_repo
from adapters_store.errors import Conflict, NotFound
from adapters_store.models import TERMINAL_STATUSES, Job, JobKind, JobStatus
from service.auth import Principal
from service.responses import Job as JobAnswer
from service.responses import JobCancelling, JobList, answers
from service.routes import resolve
from service.state import GatewayState, admin_principal, get_state

router = APIRouter()


def accepted(job_id: str, **extra) -> JSONResponse:
    """The answer of a route that started a job: 202, its id, and where to follow it."""
    return JSONResponse({"job_id": job_id, **extra, "status": JobStatus.QUEUED}, status_code=202,
                        headers={"Location": f"/v1/jobs/{job_id}"})


@router.get("/v1/jobs", responses=answers(JobList))
async def list_jobs(principal: Principal = Depends(admin_principal), state: GatewayState = Depends(get_state),
                    kind: JobKind | None = None, status: JobStatus | None = None,
                    limit: int = Query(100, ge=1, le=1000),
                    after: str | None = Query(None, max_length=64, description="a job id: the jobs older than it")):
    """Every job the key may see (a tenant's admin: its tenant's), newest first."""
    def read() -> list[dict]:
        with state.sessions() as session:
            jobs = corpus_repo.list_jobs(session, tenant=principal.tenant, every_tenant=principal.tenant is None,
                                         kind=kind, status=status, limit=limit + 1, after=after)
            return [corpus_repo.job_as_dict(job) for job in jobs]

    jobs = await asyncio.to_thread(read)
    return {"object": "list", "data": jobs[:limit], "has_more": len(jobs) > limit}


@router.get("/v1/jobs/{job_id}", responses=answers(JobAnswer))
async def get_job(job: Job = Depends(resolve.job)):
    return corpus_repo.job_as_dict(job)


@router.post("/v1/jobs/{job_id}/cancel", responses=answers(JobCancelling))
async def cancel_job(request: Request, job: Job = Depends(resolve.job), state: GatewayState = Depends(get_state)):
    """Cancel a training, a tuning, a report or an evaluation; ingestion and rebuilds run to their end."""
    job_id = job.id
    request.state.owner_tenant = job.tenant  # the audit event's tenant (service/audit.py)
    kind, status = job.kind, job.status
    if status in TERMINAL_STATUSES:
        raise Conflict(f"job {job_id!r} is already {status}", param="job_id", code="job_finished")
    if not state.jobs.cancel(job_id):  # ingestion and rebuilds do not run on the job runner
        raise Conflict(f"a {kind} job cannot be cancelled", param="job_id", code="not_cancellable")
    return {"object": "job", "id": job_id, "status": "cancelling"}


@router.get("/v1/jobs/{job_id}/examples", response_class=FileResponse, responses={200: {
    "description": "JSONL, one example a line", "content": {"application/jsonl": {"schema": {"type": "string"}}}}},
    dependencies=[Depends(resolve.reads_whole_corpora("a training's examples"))])
async def training_examples(job: Job = Depends(resolve.job), state: GatewayState = Depends(get_state)):
    """The examples a training used, as JSONL (each with the prompt, the target and its source)."""
    job_id = job.id
    path = state.trainings.folder(job_id) / "examples.jsonl"
    if job.kind != JobKind.TRAIN or not path.is_file():
        raise NotFound(f"job {job_id!r} has no training examples", param="job_id", code="examples_not_found")
    return FileResponse(path, media_type="application/jsonl", filename=f"{job_id}-examples.jsonl")
