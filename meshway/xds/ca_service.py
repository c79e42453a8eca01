"""Istio's CA API on the control plane's TCP port (istiod's 15012):
`istio.v1.auth.IstioCertificateService/CreateCertificate`, the gRPC shell around
`meshway.ca.csr.decide_certificate_request`.

The caller's token comes from its `authorization: Bearer <jwt>` metadata and is checked by
`review_token` (on Kubernetes a TokenReview for audience `istio-ca`: `meshway.kube.tokenreview`),
which runs in a thread (it is a blocking API call). The answer is the chain [leaf, root] (PEM), or
the decision's status code and reason. Every decision is logged and counted in `decisions`."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc

from ..ca import CertificateAuthority
from ..ca.csr import decide_certificate_request, find_metadata_token
from ..ca.istio_api import SERVICE, IstioCertificateRequest, IstioCertificateResponse

log = logging.getLogger(__name__)
ReviewToken = Callable[[str], dict | None]  # token -> the TokenReview's status (None: it could not be asked)


class CertificateService:
    def __init__(self, ca: CertificateAuthority, review_token: ReviewToken, default_ttl: timedelta) -> None:
        self.ca, self.review_token, self.default_ttl = ca, review_token, default_ttl
        self.decisions: Counter[str] = Counter()  # status code name -> count

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.create_certificate, request_deserializer=IstioCertificateRequest.FromString,
            response_serializer=IstioCertificateResponse.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, {"CreateCertificate": method})

    async def create_certificate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = find_metadata_token(tuple(context.invocation_metadata() or ()))
        review = None
        if token is not None:
            try:
                review = await asyncio.to_thread(self.review_token, token)
            except Exception as exc:  # noqa: BLE001: the API server is away: the caller retries
                log.warning("CreateCertificate: cannot review the caller's token: %s", exc)
                self.decisions["UNAVAILABLE"] += 1
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot review the token: {str(exc)[:200]}")
            review = review or {"authenticated": False, "error": "the token review gave no answer"}
        decision = decide_certificate_request(review, request.csr, int(request.validity_duration), self.default_ttl,
                                              self.ca.trust_domain)
        self.decisions[decision.code] += 1
        if not decision.allowed:
            log.warning("CreateCertificate from %s refused (%s): %s", context.peer(), decision.code, decision.reason)
            await context.abort(getattr(grpc.StatusCode, decision.code), decision.reason)
        chain = self.ca.sign(decision.public_key, decision.identity, decision.lifetime,  # type: ignore[arg-type]
                             decision.node)
        log.info("CreateCertificate: signed %s for %s%s", decision.identity, decision.lifetime,
                 f" bound to {decision.node}" if decision.node else "")
        return IstioCertificateResponse(cert_chain=chain)
