"""ragserve: Python client of a ragserve cluster.

    from ragserve import Client
    with Client("127.0.0.1:50051") as c:
        print(c.answer("docs", "How long is the Nawerk River?").text)

The gRPC stubs (ragserve.v1.*_pb2, *_pb2_grpc) are generated from proto/ragserve/v1 by the build
into build/python, next to a copy of this package: PYTHONPATH=build/python.
"""

from ragserve.client import (Answer, Client, CollectionInfo, Delta, Document, Event, Passage,
                             Passages, RagError, Stats)

__all__ = ["Answer", "Client", "CollectionInfo", "Delta", "Document", "Event", "Passage",
           "Passages", "RagError", "Stats"]
