"""A web app where a flow asks a human for approval and rests until the link is called.

    uvicorn examples.approval_server:app --no-access-log
    python examples/approval_server.py                       # the same

Then, in another shell::

    curl -X POST localhost:8000/flows -H 'content-type: application/json' \\
         -d '{"flow": "publish", "inputs": {"doc_id": "d-42"}}'
    curl localhost:8000/flows/<flow_id>                      # WAITING, with the open wait
    curl -N localhost:8000/flows/<flow_id>/events            # follow it live (SSE)

The server prints the approval link (standing in for an e-mail); calling it finishes the
flow, and calling it again is refused with 403::

    curl -X POST localhost:8000/external/<token> -d '{"result": "approved"}'

The flow rests in ``approval.db`` meanwhile: stop the server, start it again, and the link
still works. (Access logs are off: the link is a bearer credential and would land in them.)
"""

from __future__ import annotations

import os

import aioflow
from aioflow.web import create_app

BASE_URL = os.environ.get("APPROVAL_BASE_URL", "http://127.0.0.1:8000")

registry = aioflow.Registry()


@aioflow.task(provides="draft")
async def prepare(doc_id: str) -> str:
    return f"draft of {doc_id}"


@aioflow.task(provides="decision")
async def ask_approval(doc_id: str, draft: str, external: aioflow.External) -> object:
    link = f"{BASE_URL}/external/{external.token}"
    print(f'approve {doc_id!r}: curl -X POST {link} -d \'{{"result": "approved"}}\'')
    return external.wait(timeout=24 * 3600, info={"doc_id": doc_id, "draft": draft})


@aioflow.task(provides="published")
async def publish(doc_id: str, decision: str) -> str:
    if decision != "approved":
        raise ValueError(f"{doc_id} was not approved: {decision!r}")
    print(f"published {doc_id}")
    return f"https://example.org/docs/{doc_id}"


@registry.provides("publish")
def publish_flow() -> aioflow.Linear:
    """Prepare a document, ask for approval, publish it."""
    return aioflow.Linear("publish", prepare, ask_approval, publish)


engine = aioflow.Engine(os.environ.get("APPROVAL_JOURNAL", "sqlite:///approval.db"))
# A demo on 127.0.0.1: anyone who reaches it may start flows. In production pass
# auth= (see docs/web.md) instead of public=True.
app = create_app(engine, registry=registry, public=True)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000, access_log=False)
