"""The namespace lab behind `ccxdp lab`: a resolver, clients and a sinkhole in namespaces."""
