"""What a route's path names, resolved for the caller's key and authorised: one dependency per kind.

A corpus, adapter, evaluation set or domain in a path is named as the key names it (its tenant's
short name, or a full `tenant:name`); `*_name` turns it into the stored name (Principal.full_name)
without requiring the thing to exist (a route that creates it takes that one). `corpus` and
`domain_route` also require it to exist and answer the thing itself; `job` and `eval_run` answer
the row named by id. What the key may not see answers exactly as what does not exist (404, the
same body), so a tenant cannot probe another tenant's things.

The stored name is left on the request (`request.state.stored_name`): the audit log records it.
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Depends, Request

from adapters_store import corpus_repo
from adapters_store.errors import NotFound
from adapters_store.models import Corpus, Eval, Job
from service.auth import Principal
from service.domains import DomainRoute
from service.routes import Name
from service.state import GatewayState, admin_principal, get_state

NameDependency = Callable[..., Coroutine[Any, Any, str]]


def _stored_name_of(kind: str) -> NameDependency:
    """The dependency resolving a path `{name}` of that kind (also the error's `param`)."""

    async def stored_name(request: Request, name: Name, principal: Principal = Depends(admin_principal)) -> str:
        stored = principal.full_name(name, param=kind, kind=kind)
        request.state.stored_name = stored
        return stored

    stored_name.__name__ = f"{kind}_name"
    stored_name.__doc__ = f"The stored name of the {kind} the path names, in the key's namespace."
    return stored_name


corpus_name = _stored_name_of("corpus")
adapter_name = _stored_name_of("adapter")
evalset_name = _stored_name_of("evalset")
domain_name = _stored_name_of("domain")


async def corpus(name: str = Depends(corpus_name), state: GatewayState = Depends(get_state)) -> Corpus:
    """The corpus the path names (404 when there is none)."""
    with state.sessions() as session:
        return corpus_repo.get_corpus(session, name)


async def domain_route(name: str = Depends(domain_name), state: GatewayState = Depends(get_state)) -> DomainRoute:
    """The live route of the domain the path names (404 when there is none)."""
    return state.routing.require(name)


async def job(job_id: str, principal: Principal = Depends(admin_principal),
              state: GatewayState = Depends(get_state)) -> Job:
    """The job of that id, if the key sees it (Principal.sees_job)."""
    with state.sessions() as session:
        row = session.get(Job, job_id)
    if row is None or not principal.sees_job(row):
        raise NotFound(f"job {job_id!r} does not exist", param="job_id", code="job_not_found")
    return row


async def eval_run(eval_id: str, principal: Principal = Depends(admin_principal),
                   state: GatewayState = Depends(get_state)) -> Eval:
    """The evaluation run of that id, if the key sees its domain."""
    with state.sessions() as session:
        row = session.get(Eval, eval_id)
    if row is None or not principal.sees(row.domain):
        raise NotFound(f"evaluation {eval_id!r} does not exist", param="eval_id", code="eval_not_found")
    return row


def reads_whole_corpora(what: str) -> Callable[..., Coroutine[Any, Any, None]]:
    """A route dependency refusing `what` to a key with a document filter (Principal.check_reads_whole_corpora).
    List it in the route's `dependencies`: it runs before the path's thing is looked up."""

    async def check(principal: Principal = Depends(admin_principal)) -> None:
        principal.check_reads_whole_corpora(what)

    return check


def readable_corpus(state: GatewayState, principal: Principal, name: str, *, param: str = "corpus") -> str:
    """The stored name of a corpus the key may retrieve from (RoutingTable.may_read), named as the
    key names it; 404 otherwise. For the inference routes, which count the request before this."""
    stored = principal.full_name(name, param=param, kind="corpus")
    if not state.routing.may_read(principal, stored):
        raise NotFound(f"corpus {stored!r} does not exist", param="corpus", code="corpus_not_found")
    return stored
