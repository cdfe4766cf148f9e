"""What operators and probes ask: ``/cluster``, ``/metrics``, ``/healthz``, ``/readyz``.

``/healthz`` is liveness: 200 while the process serves, with ``status`` ``ok`` (an agent is
ready) or ``degraded`` (no agent: the fallback serves, or nothing does). ``/readyz`` is
readiness, as Kubernetes probes expect: 200 when an agent is ready, 503 when none is, so a
load balancer can prefer a gateway that has its cluster.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from kiln.serve._embed_api import ERRORS, KEYED, json_response, served
from kiln.serve._schemas import ClusterResponse, HealthResponse

router = APIRouter()


@router.get("/cluster", response_model=ClusterResponse, responses=ERRORS, dependencies=KEYED)
async def cluster_status(request: Request) -> Response:
    """This gateway, each agent online/offline with its info, and totals."""
    return json_response(await served(request).gateway.status())


@router.get("/metrics", responses=ERRORS, dependencies=KEYED, response_class=Response)
async def prometheus(request: Request) -> Response:
    """Prometheus text exposition of the gateway's metrics."""
    metrics = served(request).metrics
    return Response(metrics.render(), media_type=metrics.content_type)


@router.get("/healthz", response_model=HealthResponse)
async def healthz(request: Request) -> Response:
    """Liveness: 200 while the gateway serves; ``status`` says ``ok`` or ``degraded``."""
    return json_response(served(request).gateway.health())


@router.get("/readyz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def readyz(request: Request) -> Response:
    """Readiness: 200 when an agent is ready, 503 when none is."""
    health = served(request).gateway.health()
    if health["agents_ready"]:
        return json_response(health)
    response = json_response({**health, "error": {
        "type": "not_ready", "field": None,
        "message": f"no agent is ready (cluster {health['cluster']})"}})
    response.status_code = 503
    return response
