"""Where webhooks may be sent: public addresses only, checked when the connection is made.

A webhook URL is chosen by whoever holds an API key, and the worker POSTs to
it from inside the service's network. Without a check, a URL naming
``169.254.169.254``, ``10.0.0.1`` or ``[::1]`` would make the worker reach
the cloud metadata service or internal hosts, and ``/deliveries`` would report
what answered: a port scanner. So:

- **When a webhook is created** (:func:`check_url`) its host is read as an
  address in every form a resolver accepts (``2130706433``, ``0x7f.1``,
  ``0177.0.0.1``, ``127.1``, IPv6 with embedded IPv4), or else resolved, and
  every address must be public (:func:`blocked_reason`). A name that does not
  resolve (yet) is accepted: the check that matters is the next one.
- **When the worker connects** (:class:`PinnedBackend`, the network backend of
  the delivery client) the host is resolved once, every address is checked,
  and the TCP connection goes to a checked address itself; TLS still verifies
  the certificate for (and sends SNI of) the host name, and ``Host`` is the
  URL's. So a name that resolves to a public address at creation and to a
  private one later (DNS rebinding) is refused when it matters, and a second
  resolution between the check and the connect cannot happen.

``webhook_allow_private`` lets local development send to loopback and
private addresses; cloud metadata addresses are refused even then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import typing
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

__all__ = [
    "BlockedAddress",
    "DestinationError",
    "PinnedBackend",
    "PinnedTransport",
    "UnresolvableHost",
    "blocked_reason",
    "check_url",
    "error_class",
    "host_address",
    "resolve",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

# Cloud metadata and host-agent services, by address: AWS/GCP/Azure/OpenStack,
# AWS ECS task metadata, Azure's wire server (a public address!), Alibaba,
# Oracle, AWS over IPv6. Refused even with webhook_allow_private.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "169.254.170.2",
        "168.63.129.16",
        "100.100.100.200",
        "192.0.0.192",
        "fd00:ec2::254",
    )
)
# Ranges `ipaddress` has no property for: shared address space (RFC 6598, the
# carrier-grade NAT between ISP and customer) and the well-known NAT64 prefix
# (RFC 6052), whose last 32 bits are the IPv4 address it translates to. (The
# local-use NAT64 prefix 64:ff9b:1::/48 lies in ::/8, reserved, so refused.)
SHARED_ADDRESS_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationError(Exception):
    """A webhook's host cannot be connected to; ``kind`` is the delivery's error class."""

    kind = "connection_error"


class BlockedAddress(DestinationError):
    """The host is, or resolves to, an address webhooks must not reach."""

    kind = "blocked_address"


class UnresolvableHost(DestinationError):
    """The host name has no address (or the resolver failed or timed out)."""

    kind = "dns_error"


_DIGITS = {16: "0123456789abcdefABCDEF", 10: "0123456789", 8: "01234567"}


def _ipv4_part(text: str) -> int | None:
    # One part of an inet_aton() address: 0x.. hex, 0.. octal, else decimal.
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:], 16
        if not digits:
            return 0  # "0x" alone is 0, as inet_aton and URL parsers read it
    elif len(text) > 1 and text.startswith("0"):
        digits, base = text[1:], 8
    else:
        digits, base = text, 10
    if not digits or any(c not in _DIGITS[base] for c in digits):
        return None
    return int(digits, base)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """``host`` in any form the C resolver reads as IPv4 (``127.1``, ``0x7f.1``,
    ``0177.0.0.1``, ``2130706433``), else None (a name)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    values = [_ipv4_part(p) for p in parts]
    if any(v is None for v in values):
        return None
    numbers = typing.cast(list[int], values)
    # The last part fills the bytes the others leave: a, a.b (8.24), a.b.c (8.8.16).
    *leading, last = numbers
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    value = last
    for position, byte in enumerate(leading):
        value |= byte << (8 * (3 - position))
    return ipaddress.IPv4Address(value)


def host_address(host: str) -> IPAddress | None:
    """The address a URL's host names literally (IPv6 with or without brackets, or
    IPv4 in any inet_aton form, a trailing dot allowed); None for a name."""
    text = host.strip("[]")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text[:-1] if text.endswith(".") else text)


def _translated_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv4-mapped or NAT64 address is only another name for."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries and may be routed to: 6to4, Teredo,
    IPv4-compatible."""
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client behind the relay
    # IPv4-compatible (::a.b.c.d, deprecated): not :: and ::1 themselves.
    if int(address) >> 32 == 0 and int(address) > 1:
        return ipaddress.IPv4Address(int(address))
    return None


def _kind(address: IPAddress) -> str | None:
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if address.is_reserved:
        return "a reserved address"
    if address.is_private:
        return "a private address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:
        return "not a globally reachable address"
    return None


def _refusal(address: IPAddress, allow_private: bool) -> str | None:
    # What is wrong with the address, as a predicate ("is a loopback address").
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        translated = _translated_ipv4(address)
        if translated is not None:
            # Only the IPv4 address counts (Python < 3.13 calls every
            # IPv4-mapped address private, and NAT64 ones reserved).
            candidates = [translated]
        else:
            embedded = _embedded_ipv4(address)
            candidates = [address] if embedded is None else [embedded, address]
    for candidate in candidates:
        kind = _kind(candidate)
        if kind is None or (allow_private and candidate not in METADATA_ADDRESSES):
            continue
        return f"is {kind}" if candidate is address else f"carries {candidate}, {kind}"
    return None


def blocked_reason(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why webhooks must not reach ``address`` (``"10.0.0.1 is a private address"``),
    or None when they may."""
    refusal = _refusal(address, allow_private)
    return None if refusal is None else f"{address} {refusal}"


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (the system resolver, off the event loop).

    Module-level so tests can patch it; raises :class:`UnresolvableHost`.
    """
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"{host} does not resolve: {exc}") from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonical, sockaddr in infos:
        # The scope of a link-local IPv6 address ("fe80::1%eth0") is dropped:
        # such an address is refused anyway.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnresolvableHost(f"{host} has no address")
    return addresses


async def addresses_of(host: str, port: int, *, allow_private: bool) -> list[IPAddress]:
    """The checked addresses to connect to for ``host``; raises :class:`BlockedAddress`
    if any of them is refused (a name with one private address is refused whole),
    :class:`UnresolvableHost` if there are none."""
    literal = host_address(host)
    addresses = [literal] if literal is not None else await resolve(host, port)
    for address in addresses:
        refusal = _refusal(address, allow_private)
        if refusal is None:
            continue
        if literal is not None:
            raise BlockedAddress(f"{address} {refusal}")
        raise BlockedAddress(f"{host} resolves to {address}, which {refusal}")
    return addresses


async def check_url(url: str, *, allow_private: bool, resolve_timeout: float) -> None:
    """Refuse (:class:`BlockedAddress`) a webhook URL whose host is not public.

    A name that does not resolve within ``resolve_timeout`` passes: it is
    checked again, and pinned, at every delivery.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = 443 if parts.scheme == "https" else 80
    try:
        async with asyncio.timeout(resolve_timeout):
            await addresses_of(host, port, allow_private=allow_private)
    except (UnresolvableHost, TimeoutError):
        return


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to checked addresses.

    httpcore hands :meth:`connect_tcp` the URL's host; this resolves it once,
    checks every address, and connects to the first that answers. TLS is
    started on that stream by httpcore with the host name (SNI, certificate
    verification), so nothing about the request changes but where it goes.
    """

    def __init__(
        self, *, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None
    ) -> None:
        self.allow_private = allow_private
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await addresses_of(host, port, allow_private=self.allow_private)
        last: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:  # refused, unreachable: try the next
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("webhooks are never sent over a Unix socket")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport over :class:`PinnedBackend`; no proxy from the environment
    (a proxy would resolve the host itself, past the check)."""

    def __init__(self, backend: PinnedBackend, *, max_connections: int = 100) -> None:
        super().__init__(trust_env=False)
        # httpx takes no network backend, so its connection pool is made again
        # with one: same TLS context and limits as httpx's default, no proxy.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=backend,
        )


def _causes(exc: BaseException) -> Iterable[BaseException]:
    """``exc`` and everything it was raised from or during, groups included."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def error_class(exc: BaseException) -> str:
    """The short class a failed connection shows as in ``/deliveries``: never the
    raw error, which would tell a caller about the network behind the service."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, DestinationError):
            return cause.kind
    if any(isinstance(c, (TimeoutError, httpcore.TimeoutException)) for c in causes):
        return "timeout"
    if any(isinstance(c, socket.gaierror) for c in causes):
        return "dns_error"
    if any(isinstance(c, ssl.SSLError | ssl.CertificateError) for c in causes):
        return "tls_error"
    if any(isinstance(c, ConnectionRefusedError) for c in causes):
        return "connection_refused"
    if any(isinstance(c, ConnectionResetError | httpcore.ReadError) for c in causes):
        return "connection_reset"
    if any(
        isinstance(c, httpcore.RemoteProtocolError | httpcore.LocalProtocolError) for c in causes
    ):
        return "protocol_error"
    return "connection_error"
