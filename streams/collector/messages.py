"""One request to the collector, from its raw body to the Kafka records to produce, or the refusal.

Pure (no I/O) so that every rule is tested without a server: Segment's documented limits (32 KB
per message, 500 KB per request), gzip bodies (decompressed within the same limit, so a small
body cannot inflate to gigabytes), the write key (HTTP basic auth's user name, as the server
libraries send it, or the body's `writeKey`, as analytics.js adds it), and the Segment mapping
itself, which the worker applies again when it reads the topic.

What is produced is each message as the client sent it, keyed by its anonymous id (else its
user id), with what Segment's own API adds: the batch's `sentAt` and `context` where the message
has none, and `receivedAt`, the collector's clock, from which the worker corrects the client's
clock (`receivedAt - (sentAt - timestamp)`), and the client: the request's User-Agent where the
message has no `context.userAgent` (unless it is an HTTP library's, such as curl's or okhttp's:
that names the server-side sender, not the visitor, and would mark the call a bot), and the
client address (the connection's, or X-Forwarded-For's
behind a trusted proxy) looked up into `context.location` (ISO country, region, city) and then
dropped, truncated or kept by CONVERSIONS_IP_MODE, so that in the default `drop` mode no address
reaches the topic.
The write key and analytics.js's `_metadata` are dropped. A request is all or nothing: one
invalid message refuses it whole, with every reason, and nothing of it is produced.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from streams.core.input.event import MAX_NESTING, ClickEvent, nesting_depth
from streams.core.input.formats.segment import segment_event
from streams.core.input.geo import IpMode, Place, mask, parse_address
from streams.core.input.useragent import is_http_library
from streams.errors import ConversionsError

SEGMENT_MESSAGE_BYTES = 32 * 1024
SEGMENT_REQUEST_BYTES = 500 * 1024
# the path of each call: Segment's HTTP API names, and the short ones analytics.js posts to
SINGLE_CALLS = {
    "track": "track",
    "t": "track",
    "page": "page",
    "p": "page",
    "screen": "screen",
    "s": "screen",
    "identify": "identify",
    "i": "identify",
    "alias": "alias",
    "a": "alias",
    "group": "group",
    "g": "group",
}
BATCH_CALLS = frozenset(("batch", "b", "import"))
Locate = Callable[[str], Place]
MAX_BATCH_MESSAGES = 500
"""The default of `CONVERSIONS_COLLECTOR_MAX_BATCH_MESSAGES`: the tracking libraries send 15 to
100 messages a batch; 500 KB of tiny messages would otherwise be thousands, seconds of work."""
_DROPPED = ("writeKey", "_metadata")


@dataclass(frozen=True)
class CollectorConfig:
    """How the collector listens and what it accepts (`CONVERSIONS_COLLECTOR_*`)."""

    topic: str
    host: str = "127.0.0.1"
    port: int = 6067
    write_keys: frozenset[str] = frozenset()
    """Accepted write keys; empty accepts any (only sensible on loopback)."""
    allowed_origins: frozenset[str] = frozenset()
    """Browser origins allowed to post (CORS); "*" allows every origin, with write keys only."""
    max_message_bytes: int = SEGMENT_MESSAGE_BYTES
    max_request_bytes: int = SEGMENT_REQUEST_BYTES
    send_timeout_s: float = 10.0
    """How long a request waits for the broker's acknowledgement before answering 503."""
    max_nesting: int = MAX_NESTING
    """How deep a message's `properties` and `context` may nest (`CONVERSIONS_MAX_NESTING`)."""
    max_batch_messages: int = MAX_BATCH_MESSAGES
    """The most messages one batch may carry."""
    rate_limit: float = 50.0
    """Requests a second per client address and per write key (0: no limit); see `ratelimit`."""
    ip_mode: IpMode = "drop"
    """What of the client address is written to the topic (CONVERSIONS_IP_MODE)."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks whose X-Forwarded-For is believed (CONVERSIONS_COLLECTOR_TRUSTED_PROXIES)."""


@dataclass(frozen=True)
class Client:
    """Who sent the request, as the connection says: the address (`client_address`) and the
    User-Agent header. Written into each message that lacks them, as Segment's API does."""

    address: str | None = None
    user_agent: str | None = None


def client_address(peer: str | None, forwarded_for: str | None, trusted: Iterable[str]) -> str | None:
    """The client's address: the connection's peer, or, when the peer is a trusted proxy, the
    address X-Forwarded-For names last before the trusted proxies (the header's left part is the
    client's own claim, which any client can forge)."""
    networks = [ipaddress.ip_network(n, strict=False) for n in trusted]
    peer_address = parse_address(peer)

    def is_trusted(address: Any) -> bool:
        return address is not None and any(address in network for network in networks)

    if not forwarded_for or not is_trusted(peer_address):
        return str(peer_address) if peer_address is not None else None
    for hop in reversed([part.strip() for part in forwarded_for.split(",") if part.strip()]):
        address = parse_address(hop)
        if address is None:
            break
        if not is_trusted(address):
            return str(address)
    return str(peer_address)


def _with_client(message: dict[str, Any], client: Client, mode: IpMode, locate: Locate | None) -> None:
    """The request's address and user agent where the message has none; then the address is
    looked up (`context.location`, ISO country) and CONVERSIONS_IP_MODE applied, so that in
    `drop` mode no address is written to the topic."""
    context = message.get("context")
    if not isinstance(context, dict):
        if context is not None:
            return  # refused by the mapping
        context = message["context"] = {}
    # a backend's curl or HTTP library is the sender, not the visitor: its agent would make every
    # server-side call a bot (CONVERSIONS_BOTS=exclude); a browser's or a crawler's is the visitor's
    if client.user_agent and not context.get("userAgent") and not is_http_library(client.user_agent):
        context["userAgent"] = client.user_agent[:1024]
    address = context.get("ip") if isinstance(context.get("ip"), str) else client.address
    if address is None:
        return
    if locate is not None and not isinstance(context.get("location"), dict):
        place = locate(address)
        if place.country is not None:
            context["location"] = {k: v for k, v in place._asdict().items() if v is not None}
    kept = mask(address, mode)
    if kept is None:
        context.pop("ip", None)
    else:
        context["ip"] = kept


class Refusal(ConversionsError):
    """Why a request is refused: its HTTP status, a machine-readable code and the reason."""

    def __init__(self, status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors = errors or []

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass
class Accepted:
    """The records of an accepted request, in order: (key, value) for the clickstream topic."""

    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    types: Counter[str] = field(default_factory=Counter)
    write_key: str | None = None
    """The write key the request was accepted with (None: no keys configured)."""


def accept(
    call: str,
    body: bytes,
    *,
    config: CollectorConfig,
    received_at: datetime,
    content_encoding: str | None = None,
    authorization: str | None = None,
    client: Client | None = None,
    locate: Locate | None = None,
) -> Accepted:
    """The records one request to `/v1/<call>` produces; raises Refusal (400, 401, 404, 413)."""
    if call not in SINGLE_CALLS and call not in BATCH_CALLS:
        raise Refusal(404, "not_found", f"no such call /v1/{call}")
    if len(body) > config.max_request_bytes:
        raise Refusal(
            413, "too_large", f"the body is {len(body)} bytes, the limit is {config.max_request_bytes}"
        )
    body = _decompressed(body, content_encoding, config.max_request_bytes)
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Refusal(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise Refusal(400, "invalid_request", f"the body is a JSON {type(payload).__name__}, not an object")
    write_key = _authorize(config.write_keys, authorization, payload.get("writeKey"))

    stamp = received_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if call in BATCH_CALLS:
        batch = payload.get("batch")
        if not isinstance(batch, list) or not batch:
            raise Refusal(400, "invalid_request", "a batch is an object with a non-empty `batch` array")
        if len(batch) > config.max_batch_messages:
            raise Refusal(
                400,
                "too_many_messages",
                f"the batch holds {len(batch)} messages, the limit is {config.max_batch_messages}: "
                "send them in several batches",
            )
        shared_context = payload.get("context")
        if shared_context is not None and not isinstance(shared_context, dict):
            raise Refusal(400, "invalid_request", "the batch's context is not an object")
        messages = [_stamped(m, payload.get("sentAt"), shared_context, stamp) for m in batch]
    else:
        messages = [_stamped({**payload, "type": SINGLE_CALLS[call]}, None, None, stamp)]
    for message in messages:
        if isinstance(message, dict):
            _with_client(message, client or Client(), config.ip_mode, locate)

    accepted = Accepted(write_key=write_key)
    errors: list[dict[str, Any]] = []
    # a message wraps its properties and context in one more level
    outer = config.max_nesting + 1
    for index, message in enumerate(messages):
        if nesting_depth(message, outer) > outer:
            raise Refusal(
                400,
                "too_deeply_nested",
                f"message {index} nests deeper than {outer} levels "
                f"(properties and context at most {config.max_nesting})",
            )
        try:
            value = orjson.dumps(message)
        except orjson.JSONEncodeError as exc:  # what orjson.loads reads, it writes; kept as a guard
            raise Refusal(400, "invalid_request", f"message {index} cannot be encoded: {exc}") from None
        if len(value) > config.max_message_bytes:
            raise Refusal(
                413,
                "too_large",
                f"message {index} is {len(value)} bytes, the limit is {config.max_message_bytes}",
            )
        result = segment_event(message, max_nesting=config.max_nesting)
        if isinstance(result, ClickEvent):
            key = _home_key(result)
        elif result is None:  # a group call: valid, produced, ignored by the engine
            key = _group_key(message)
        else:
            errors.append({"index": index, "reason": result.reason, "message": result.detail})
            continue
        accepted.records.append((key.encode(), value))
        accepted.types[message["type"]] += 1
    if errors:
        if call in SINGLE_CALLS:
            raise Refusal(400, "invalid_request", errors[0]["message"], errors)
        reasons = "; ".join(f"message {e['index']}: {e['message']}" for e in errors[:5])
        raise Refusal(400, "invalid_request", reasons, errors)
    return accepted


def _decompressed(body: bytes, encoding: str | None, limit: int) -> bytes:
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise Refusal(400, "invalid_request", f"content encoding {encoding!r} is not gzip")
    inflater = zlib.decompressobj(31 if "gzip" in encoding else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Refusal(400, "invalid_request", f"the body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise Refusal(413, "too_large", f"the body inflates past {limit} bytes")
    if not inflater.eof:
        raise Refusal(400, "invalid_request", f"the {encoding} body is truncated")
    return out


def _authorize(keys: Iterable[str], authorization: str | None, body_key: Any) -> str | None:
    """The write key a request is accepted with: basic auth's user name (Segment's server
    libraries) or the body's (analytics.js). With no keys configured, any request is accepted."""
    keys = list(keys)
    if not keys:
        return None
    given: list[str] = []
    if authorization and authorization[:6].lower() == "basic ":
        try:
            given.append(
                base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")[0]
            )
        except (binascii.Error, UnicodeDecodeError):
            raise Refusal(401, "unauthorized", "the Authorization header is not valid basic auth") from None
    if isinstance(body_key, str):
        given.append(body_key)
    if not given:
        raise Refusal(401, "unauthorized", "no write key: send it as the basic auth user name or `writeKey`")
    for key in keys:
        if any(hmac.compare_digest(g.encode(), key.encode()) for g in given):
            return key
    raise Refusal(401, "unauthorized", "unknown write key")


def _stamped(message: Any, sent_at: Any, context: Mapping[str, Any] | None, received_at: str) -> Any:
    """A message as it is produced: self-contained, with the collector's `receivedAt`."""
    if not isinstance(message, dict):
        return message  # refused by the mapping, with its index
    out = {key: value for key, value in message.items() if key not in _DROPPED}
    if sent_at is not None and "sentAt" not in out:
        out["sentAt"] = sent_at
    if context:
        own = out.get("context")
        out["context"] = {**context, **own} if isinstance(own, dict) else own if own is not None else context
    out["receivedAt"] = received_at
    return out


def _home_key(event: ClickEvent) -> str:
    """The record's key: the anonymous id, else the user id. Identity stitching decides an event
    on its anonymous id's partition when it has one (streams/core/journeys/identity.py), so keying by it
    keeps one device's calls in order all the way there, sign-in included: keyed by the user id,
    an `identify` would travel another partition than the page views before it, and in the same
    millisecond could overtake them."""
    return event.anonymous_id if event.anonymous_id is not None else event.identity


def _group_key(message: Mapping[str, Any]) -> str:
    for name in ("anonymousId", "userId", "groupId"):
        value = message.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return ""
