"""The neutral network graph: layers, blobs and inferred shapes."""

from segconvert.graph.net import Layer, Net, load_net

__all__ = ["Layer", "Net", "load_net"]
