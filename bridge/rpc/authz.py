"""The authorisation interceptor: every call authenticated, checked against
:data:`bridge.rpc.rules.RULES` and audited before any handler runs.

Handlers that need the caller's scope read it through :func:`current_principal`; they
never look at certificates themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from bridge.aio import stop_task
from bridge.domain.errors import BridgeError, BridgeReason
from bridge.rpc.audit import AuditLog, AuditRecord, now
from bridge.rpc.authn import Authenticator, Unauthenticated, describe, require_tls13
from bridge.rpc.errors import abort_reason
from bridge.rpc.roles import Principal
from bridge.rpc.rules import DEVELOPMENT, RULES, Rule, TransferLedgers, role_allowed

if TYPE_CHECKING:
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:  # the runtime class is not subscriptable
    _InterceptorBase = grpc.aio.ServerInterceptor

_CURRENT: contextvars.ContextVar[Principal] = contextvars.ContextVar("kstb_principal")

STREAM_RECHECK_S = 2.0
"""Seconds an open stream may run on a certificate revoked or expired meanwhile."""

PLAINTEXT_PRINCIPAL = Principal(org="plaintext-development", role=DEVELOPMENT)
"""Every caller of a server running in development plaintext (no authentication)."""


class NoPrincipal(BridgeError):
    """A handler asked for the caller but no interceptor authenticated the call."""


def current_principal() -> Principal:
    """The authenticated caller of the RPC being handled.

    Fails closed: raises NoPrincipal when the interceptor did not run for this call.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise NoPrincipal("no authenticated caller for this call") from None


def _transfer_id_of(request: Any) -> str:
    tid = getattr(request, "transfer_id", None)
    if isinstance(tid, bytes):
        return "0x" + tid.hex() if tid else ""
    if isinstance(tid, str):
        return tid[:80]
    return ""


_AUTHZ_REASONS: dict[grpc.StatusCode, BridgeReason] = {
    grpc.StatusCode.UNAUTHENTICATED: BridgeReason.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: BridgeReason.PERMISSION_DENIED,
    grpc.StatusCode.UNIMPLEMENTED: BridgeReason.INVALID_REQUEST,
}
"""The ErrorInfo reason of each status the interceptor refuses a call with."""


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class AuthorisationInterceptor(_InterceptorBase):
    """Authenticates the peer certificate, applies the method's rule, audits the decision.

    Guarantees: a handler runs only for a caller whose certificate maps to a Principal
    (else UNAUTHENTICATED), whose role the method's rule admits and whose request passes
    the rule's scope check (else PERMISSION_DENIED with the reason); a method without a
    rule is refused, and a method no service implements is answered UNIMPLEMENTED only
    after its caller is authenticated. Every decision, allowed or denied, is one audit
    record; an unexpected error while deciding is audited and refused (UNAUTHENTICATED
    while authenticating, PERMISSION_DENIED while scoping), never passed on. A streamed
    response re-authenticates its caller at least every ``recheck_every`` seconds and ends
    with UNAUTHENTICATED (audited) once the certificate is revoked or expired. With
    ``authenticator`` None (development plaintext) every caller is allowed, and audited.
    """

    def __init__(
        self,
        authenticator: Authenticator | None,
        audit: AuditLog,
        transfer_ledgers: TransferLedgers | None = None,
        recheck_every: float = STREAM_RECHECK_S,
    ) -> None:
        self._authn = authenticator
        self._audit = audit
        self._lookup = transfer_ledgers
        self._recheck_every = recheck_every

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        if self._authn is None:
            return PLAINTEXT_PRINCIPAL
        auth = context.auth_context()
        require_tls13(auth)  # SECURITY: TLS 1.2 completes the handshake; it stops here
        pems = list(auth.get("x509_pem_cert") or [])
        if not pems:
            raise Unauthenticated("no client certificate")
        return self._authn.principal(pems[0])

    def _unauthenticated(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal | None:
        """For the audit record: who the refused certificate claimed to be, if anyone."""
        pems = list(context.auth_context().get("x509_pem_cert") or [])
        return describe(pems[0]) if pems else None

    async def _decide(
        self,
        method: str,
        rule: Rule | None,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        *,
        implemented: bool = True,
    ) -> Principal:
        principal: Principal | None = None
        try:
            try:
                principal = self._principal(context)
            except Unauthenticated as exc:
                principal = self._unauthenticated(context)
                raise _Denied(grpc.StatusCode.UNAUTHENTICATED, str(exc)) from None
            except Exception as exc:  # SECURITY: fail closed, audited, never passed on
                principal = self._unauthenticated(context)
                raise _Denied(
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"could not authenticate the caller: {type(exc).__name__}",
                ) from None
            if not implemented:
                raise _Denied(grpc.StatusCode.UNIMPLEMENTED, f"method {method} does not exist")
            if rule is None:
                raise _Denied(grpc.StatusCode.PERMISSION_DENIED, f"no rule admits {method}")
            if not role_allowed(rule, principal):
                raise _Denied(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"role {principal.role_text} may not call {method}",
                )
            if rule.scope is not None and principal.role != DEVELOPMENT:
                if request is None:  # fail closed: a streamed request cannot be scoped here
                    raise _Denied(grpc.StatusCode.PERMISSION_DENIED, f"{method} cannot be scoped")
                try:
                    why = await rule.scope(principal, request, self._lookup)
                except Exception as exc:  # SECURITY: fail closed, audited
                    raise _Denied(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"could not check the scope of {method}: {type(exc).__name__}",
                    ) from None
                if why is not None:
                    raise _Denied(grpc.StatusCode.PERMISSION_DENIED, why)
        except _Denied as denied:
            self._write(principal, context, method, request, False, denied.reason)
            await abort_reason(context, denied.code, _AUTHZ_REASONS[denied.code], denied.reason)
            raise AssertionError("unreachable") from None  # abort raises
        self._write(principal, context, method, request, True, "")
        return principal

    async def _recheck(
        self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        """Re-authenticate the caller of an open stream; end it (audited) if refused now."""
        if self._authn is None:
            return
        try:
            self._principal(context)
        except Exception as exc:  # Unauthenticated, or anything else: fail closed
            reason = str(exc) if isinstance(exc, Unauthenticated) else type(exc).__name__
            reason = f"stream ended: {reason}"
            self._write(self._unauthenticated(context), context, method, request, False, reason)
            await abort_reason(
                context, grpc.StatusCode.UNAUTHENTICATED, BridgeReason.UNAUTHENTICATED, reason
            )

    async def _stream(
        self,
        method: str,
        request: Any,
        result: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        """Run a streaming handler (an async generator, or a coroutine writing to the
        context itself), re-checking its caller as it goes.

        SECURITY: revocation and expiry reach open streams: while the handler runs (busy or
        idle), the caller is re-authenticated every ``recheck_every`` seconds, so no response
        is written more than that long after the last check; a refused caller's stream ends
        UNAUTHENTICATED and the handler is cancelled."""

        async def run() -> None:
            if not hasattr(result, "__aiter__"):
                await result
                return
            async for item in result:
                await context.write(item)

        # One task per stream, watched from here: the items flow through it untouched.
        task = asyncio.ensure_future(run())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self._recheck_every)
                if done:
                    task.result()
                    return
                await self._recheck(method, request, context)
        finally:
            if not task.done():
                await stop_task(task)  # the caller's own cancel is never swallowed

    def _write(
        self,
        p: Principal | None,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        request: Any,
        allowed: bool,
        reason: str,
    ) -> None:
        self._audit.record(
            AuditRecord(
                at=now(),
                org=p.org if p else "",
                role=p.role_text if p else "",
                cn=p.common_name if p else "",
                fingerprint=p.fingerprint if p else "",
                peer=context.peer() or "",
                method=method,
                transfer_id=_transfer_id_of(request) if request is not None else "",
                allowed=allowed,
                reason=reason,
            )
        )

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap the method's handler so the decision runs first, inside the call."""
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        rule = RULES.get(method)
        if handler is None:
            decide = self._decide

            # SECURITY: no service implements it: still authenticate and audit the caller
            # before answering (UNIMPLEMENTED only to an authenticated one).
            async def unknown(requests: Any, context: Any) -> Any:
                await decide(method, rule, None, context, implemented=False)

            return grpc.stream_stream_rpc_method_handler(unknown)
        for kind, make_handler, unary_request, stream_response in _HANDLER_KINDS:
            inner = getattr(handler, kind)
            if inner is not None:
                return make_handler(
                    self._guarded(inner, method, rule, unary_request, stream_response),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler

    def _guarded(
        self,
        inner: Callable[[Any, Any], Any],
        method: str,
        rule: Rule | None,
        unary_request: bool,
        stream_response: bool,
    ) -> Callable[[Any, Any], Awaitable[Any]]:
        """``inner`` behind the decision: the caller's principal is decided (and the call
        refused) before ``inner`` runs, and is :func:`current_principal` while it runs. The
        scope check sees the request of a unary-request method, None for a request stream."""
        decide = self._decide
        stream = self._stream

        async def guarded(request: Any, context: Any) -> Any:
            seen = request if unary_request else None
            token = _CURRENT.set(await decide(method, rule, seen, context))
            try:
                result = inner(request, context)
                if stream_response:
                    # Streams re-check their caller as they go (revocation, expiry).
                    return await stream(method, seen, result, context)
                return await result
            finally:
                _CURRENT.reset(token)

        return guarded


_HANDLER_KINDS: tuple[
    tuple[str, Callable[..., grpc.RpcMethodHandler[Any, Any]], bool, bool], ...
] = (
    ("unary_unary", grpc.unary_unary_rpc_method_handler, True, False),
    ("unary_stream", grpc.unary_stream_rpc_method_handler, True, True),
    ("stream_unary", grpc.stream_unary_rpc_method_handler, False, False),
    ("stream_stream", grpc.stream_stream_rpc_method_handler, False, True),
)
"""Each handler kind: its attribute, its factory, whether the request is one message and
whether the response is a stream (in the order a handler is checked)."""
