"""A thin, typed wrapper over ragserve's public gRPC API (ragserve.v1.RagService).

The stubs under ragserve.v1 are generated from proto/ragserve/v1 at build time; this module only
turns their messages into plain dataclasses and gRPC errors into RagError.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import grpc

from ragserve.v1 import index_pb2, common_pb2, rag_pb2, rag_pb2_grpc

_METRICS = {
    "cosine": common_pb2.METRIC_COSINE,
    "ip": common_pb2.METRIC_INNER_PRODUCT,
    "l2": common_pb2.METRIC_L2,
}
_INDEX_KINDS = {
    "flat": index_pb2.INDEX_KIND_FLAT,
    "hnsw": index_pb2.INDEX_KIND_HNSW,
    "ivf_flat": index_pb2.INDEX_KIND_IVF_FLAT,
    "ivf_pq": index_pb2.INDEX_KIND_IVF_PQ,
}


class RagError(Exception):
    """A call failed; `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


@dataclasses.dataclass(frozen=True)
class Passage:
    """A retrieved passage: the first event of a query."""
    id: str
    score: float
    text: str
    metadata: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Passages:
    passages: Sequence[Passage]


@dataclasses.dataclass(frozen=True)
class Delta:
    """New answer text and its token ids."""
    text: str
    token_ids: Sequence[int]


@dataclasses.dataclass(frozen=True)
class Stats:
    """The last event of a query. Timings are in milliseconds (search_ms, ttft_ms, total_ms...)."""
    prompt_tokens: int
    cached_prompt_tokens: int
    generated_tokens: int
    finish_reason: str
    worker_id: str
    retries: int
    timings: Mapping[str, float]


Event = Union[Passages, Delta, Stats]


@dataclasses.dataclass(frozen=True)
class Answer:
    """A whole answer (Client.answer)."""
    text: str
    token_ids: Sequence[int]
    passages: Sequence[Passage]
    stats: Stats


@dataclasses.dataclass(frozen=True)
class Document:
    """A document to ingest. `vector` is optional (the collection's embedder makes one)."""
    id: str
    text: str
    metadata: Optional[Mapping[str, Any]] = None
    vector: Optional[Sequence[float]] = None


@dataclasses.dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    metric: str
    index: str
    num_documents: int
    num_vectors: int


def _credentials(tls: Union[bool, str, bytes, grpc.ChannelCredentials, None]):
    if tls is None or tls is False:
        return None
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, str):  # a PEM CA bundle's path
        with open(tls, "rb") as f:
            return grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.ssl_channel_credentials(root_certificates=tls)


def _name_of(table: Mapping[str, int], value: int) -> str:
    for name, v in table.items():
        if v == value:
            return name
    return "unspecified"


def _info(msg: index_pb2.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(name=msg.spec.name, dimension=msg.spec.dimension,
                          metric=_name_of(_METRICS, msg.spec.metric),
                          index=_name_of(_INDEX_KINDS, msg.spec.index_kind),
                          num_documents=msg.num_documents, num_vectors=msg.num_vectors)


def _stats(msg: rag_pb2.QueryStats) -> Stats:
    t = msg.timings
    timings = {f.name: getattr(t, f.name) for f in t.DESCRIPTOR.fields}
    return Stats(prompt_tokens=msg.prompt_tokens, cached_prompt_tokens=msg.cached_prompt_tokens,
                 generated_tokens=msg.generated_tokens, finish_reason=msg.finish_reason,
                 worker_id=msg.worker_id, retries=msg.retries, timings=timings)


def _event(ev: rag_pb2.QueryEvent) -> Optional[Event]:
    kind = ev.WhichOneof("event")
    if kind == "passages":
        return Passages(tuple(
            Passage(id=p.id, score=p.score, text=p.text,
                    metadata=json.loads(p.metadata_json) if p.metadata_json else {})
            for p in ev.passages.passages))
    if kind == "delta":
        return Delta(text=ev.delta.text, token_ids=tuple(ev.delta.token_ids))
    if kind == "stats":
        return _stats(ev.stats)
    return None  # an event kind newer than this client


def _document(d: Union[Document, Mapping[str, Any]]) -> index_pb2.Document:
    if isinstance(d, Mapping):
        d = Document(id=d["id"], text=d.get("text", ""), metadata=d.get("metadata"),
                     vector=d.get("vector"))
    msg = index_pb2.Document(id=d.id, text=d.text)
    if d.metadata:
        msg.metadata_json = json.dumps(d.metadata)
    if d.vector is not None:
        msg.vector.extend(d.vector)
    return msg


class Client:
    """A connection to a ragserve router.

    Client("127.0.0.1:50051", token=None, tls=False, timeout=60.0, admin_token=None): `tls` is
    False (plaintext), True (system roots), a CA bundle path or PEM bytes, or
    grpc.ChannelCredentials; `token` (the public credential) is sent as `authorization: Bearer
    <token>`; `admin_token` (the administration credential, docs/SECURITY.md) is sent instead by
    the calls that need it: create_collection, drop_collection and ingest(create_dimension > 0);
    `timeout` is every call's deadline in seconds.
    """

    def __init__(self, target: str, token: Optional[str] = None,
                 tls: Union[bool, str, bytes, grpc.ChannelCredentials, None] = False,
                 timeout: float = 60.0, admin_token: Optional[str] = None):
        creds = _credentials(tls)
        self._channel = (grpc.secure_channel(target, creds) if creds is not None
                         else grpc.insecure_channel(target))
        self._stub = rag_pb2_grpc.RagServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._admin_metadata = ((("authorization", f"Bearer {admin_token}"),) if admin_token
                                else self._metadata)
        self._timeout = timeout

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, fn, request, timeout: Optional[float] = None, admin: bool = False):
        try:
            return fn(request, timeout=timeout or self._timeout,
                      metadata=self._admin_metadata if admin else self._metadata)
        except grpc.RpcError as e:
            raise RagError(e.code(), e.details()) from None

    # ---- queries ----------------------------------------------------------------------------

    def query(self, collection: str, question: str, *, top_k: int = 0, max_tokens: int = 0,
              temperature: float = 0.0, top_p: float = 0.0, sampling_top_k: int = 0,
              seed: int = 0, stop: Sequence[str] = (), ignore_eos: bool = False,
              use_context_cache: bool = True, filter: Optional[Mapping[str, str]] = None,
              timeout: Optional[float] = None) -> Iterator[Event]:
        """Asks a RAG question; yields Passages, then Delta events as the answer streams, then
        Stats. 0 means the server's default (top_k 4, max_tokens 128); temperature 0 is greedy.
        Closing the iterator early cancels the query."""
        req = rag_pb2.QueryRequest(collection=collection, question=question, top_k=top_k,
                                   use_context_cache=use_context_cache)
        s = req.sampling
        s.temperature, s.top_p, s.top_k, s.seed = temperature, top_p, sampling_top_k, seed
        s.max_tokens, s.ignore_eos = max_tokens, ignore_eos
        s.stop.extend(stop)
        for k, v in (filter or {}).items():
            req.filter.equals[k] = v
        call = self._stub.Query(req, timeout=timeout or self._timeout, metadata=self._metadata)
        try:
            for ev in call:
                e = _event(ev)
                if e is not None:
                    yield e
        except grpc.RpcError as e:
            raise RagError(e.code(), e.details()) from None
        finally:
            call.cancel()  # no-op once the stream has ended

    def answer(self, collection: str, question: str, **kwargs) -> Answer:
        """query() gathered into one Answer (same keyword arguments)."""
        passages: Sequence[Passage] = ()
        text, ids, stats = [], [], None
        for e in self.query(collection, question, **kwargs):
            if isinstance(e, Passages):
                passages = e.passages
            elif isinstance(e, Delta):
                text.append(e.text)
                ids.extend(e.token_ids)
            else:
                stats = e
        if stats is None:
            raise RagError(grpc.StatusCode.INTERNAL, "the query stream ended without stats")
        return Answer(text="".join(text), token_ids=tuple(ids), passages=passages, stats=stats)

    # ---- ingest -----------------------------------------------------------------------------

    def ingest(self, collection: str, documents: Iterable[Union[Document, Mapping[str, Any]]], *,
               create_dimension: int = 0, metric: str = "cosine", index: str = "hnsw",
               batch: int = 256, pre_encode: bool = False,
               timeout: Optional[float] = None) -> int:
        """Streams documents (Document or {"id", "text", "metadata", "vector"} dicts) into a
        collection, `batch` per message; with create_dimension > 0 the collection is created
        first when missing. Returns the number of documents ingested."""
        if batch < 1:
            raise ValueError("batch must be >= 1")

        def requests() -> Iterator[rag_pb2.IngestRequest]:
            first = rag_pb2.IngestRequest(collection=collection, pre_encode=pre_encode)
            if create_dimension > 0:
                first.create_spec.CopyFrom(_spec(collection, create_dimension, metric, index))
            yield first
            it = iter(documents)
            while chunk := list(itertools.islice(it, batch)):
                yield rag_pb2.IngestRequest(documents=[_document(d) for d in chunk])

        return self._call(self._stub.Ingest, requests(), timeout,
                          admin=create_dimension > 0).ingested

    # ---- collections ------------------------------------------------------------------------

    def collections(self) -> list[CollectionInfo]:
        """Every collection of the cluster."""
        resp = self._call(self._stub.ListCollections, index_pb2.ListCollectionsRequest())
        return [_info(c) for c in resp.collections]

    def create_collection(self, name: str, dimension: int, *, metric: str = "cosine",
                          index: str = "hnsw") -> CollectionInfo:
        """Creates an empty collection (metric: cosine | ip | l2; index: flat | hnsw | ivf_flat |
        ivf_pq). ALREADY_EXISTS raises RagError."""
        req = index_pb2.CreateCollectionRequest(spec=_spec(name, dimension, metric, index))
        return _info(self._call(self._stub.CreateCollection, req, admin=True).info)

    def drop_collection(self, name: str) -> None:
        self._call(self._stub.DropCollection, index_pb2.DropCollectionRequest(name=name),
                   admin=True)


def _spec(name: str, dimension: int, metric: str, index: str) -> index_pb2.CollectionSpec:
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {sorted(_METRICS)}, got {metric!r}")
    if index not in _INDEX_KINDS:
        raise ValueError(f"index must be one of {sorted(_INDEX_KINDS)}, got {index!r}")
    return index_pb2.CollectionSpec(name=name, dimension=dimension, metric=_METRICS[metric],
                                    index_kind=_INDEX_KINDS[index])
