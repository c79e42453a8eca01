"""The gRPC shell of Istio's debug xDS types on the TCP port (`meshway.xds.debug`): an ADS stream whose
first request asks for `istio.io/debug/...` is served here instead of as a proxy's stream.

The caller proves who it is as istiod's debug endpoints want it (`decide_debug_caller`): the client
certificate the TLS front verified, else its `authorization: Bearer <jwt>` checked with
`review_token` (on Kubernetes a TokenReview for `istio-ca`, run in a thread: a blocking API call).
Then each request that is due an answer (`detect_answer_due`) gets one built from the server's state
at that moment; the stream ends when the caller closes it."""
from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import grpc

from .. import __version__
from ..ca.csr import find_metadata_token
from ..ca.serving import find_peer_spiffe_ids
from .debug import SYNCZ, DebugCaller, SyncSource, build_syncz, decide_debug_caller, detect_answer_due

log = logging.getLogger(__name__)
ReviewToken = Callable[[str], dict | None]


class DebugService:
    def __init__(self, source: Callable[[], SyncSource], control_plane: Any, trust_domain: str,
                 review_token: ReviewToken | None) -> None:
        self.source, self.control_plane, self.trust_domain = source, control_plane, trust_domain
        self.review_token = review_token  # None: only a client certificate proves a caller
        self.answered = 0

    async def identify(self, context: grpc.aio.ServicerContext, cert_pem: str | bytes | None) -> DebugCaller:
        ids = find_peer_spiffe_ids(cert_pem) if cert_pem else ()
        review = None
        token = find_metadata_token(tuple(context.invocation_metadata() or ()))
        if not ids and token is not None and self.review_token is not None:
            try:
                review = await asyncio.to_thread(self.review_token, token)
            except Exception as exc:  # noqa: BLE001: the API server is away
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot review the token: {str(exc)[:200]}")
            review = review or {"authenticated": False, "error": "the token review gave no answer"}
        return decide_debug_caller(ids, review, self.trust_domain)

    async def serve(self, first: Any, context: grpc.aio.ServicerContext, cert_pem: str | bytes | None) -> None:
        caller = await self.identify(context, cert_pem)
        if not caller.allowed:
            log.warning("debug request %s from %s refused: %s", first.type_url[:100], context.peer(), caller.reason)
            await context.abort(getattr(grpc.StatusCode, caller.code), caller.reason)
        answered, request = False, first
        while True:
            if request.type_url == SYNCZ and detect_answer_due(request.response_nonce, answered):
                await context.write(build_syncz(self.source(), caller, self.control_plane, __version__,
                                                uuid.uuid4().hex[:12]))
                answered, self.answered = True, self.answered + 1
                log.info("syncz for %s (%s)", caller.identity, caller.namespace or "every namespace")
            elif not answered:  # istiod answers other debug types it does not know with nothing
                await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                    f"meshway serves {SYNCZ} only, not {request.type_url[:100]!r}")
            request = await context.read()
            if request is grpc.aio.EOF:
                return
