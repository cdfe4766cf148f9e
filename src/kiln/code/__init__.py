"""Code written in the notebook runs on any node.

``call`` / ``map`` / ``remote`` run notebook-defined code on agents (shipped by value, once per
agent), ``inspect`` / ``remote_module`` look at a node from the driver, and
``load_ipython_extension`` makes IPython's completion ask the nodes.
"""

from kiln.code._call import RemoteFunction, call, map, remote
from kiln.code._context import current, current_node
from kiln.code._introspect import (
    NodeReport,
    ObjectReport,
    RemoteModule,
    inspect,
    remote_module,
)
from kiln.code._ipython import load_ipython_extension, unload_ipython_extension
from kiln.code._pickling import ShipStats, registered_modules, shipments

__all__ = [
    "NodeReport",
    "ObjectReport",
    "RemoteFunction",
    "RemoteModule",
    "ShipStats",
    "call",
    "current",
    "current_node",
    "inspect",
    "load_ipython_extension",
    "map",
    "registered_modules",
    "remote",
    "remote_module",
    "shipments",
    "unload_ipython_extension",
]
