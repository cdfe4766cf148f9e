"""The routing strategies live beside the cluster layer (``kiln._routing``): kiln.embed and
the gateway both route with them."""

from kiln._routing import STRATEGIES, Router, make_router, plan

__all__ = ["STRATEGIES", "Router", "make_router", "plan"]
