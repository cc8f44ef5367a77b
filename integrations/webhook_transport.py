"""The only module that talks to webhook receivers: where a URL may point (SSRF guard), and one POST to it.

The host is resolved once per attempt and the connection goes to the address that was checked (the Host header
and TLS server name still carry the host name), so a DNS answer that changes between the check and the connect
cannot steer a delivery into the private network. Redirects are never followed: a 3xx is the receiver's answer.
"""
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import urllib3
from django.conf import settings

from foundation.errors import InvalidInput


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    target: str  # path and query
    address: str  # the checked IP address the connection goes to


@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (timeout, refused connection, DNS failure)
    error: str = ""
    retry_after: int | None = None  # seconds, when a 429 or 503 said how long to wait


class UnsafeDestination(InvalidInput):
    """The URL points somewhere deliveries may not go."""


def _refused_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    # is_global is False for private (RFC 1918, ULA), loopback, link-local (cloud metadata at 169.254.169.254),
    # shared (100.64/10), reserved and unspecified addresses.
    return not ip.is_global or ip.is_multicast


def check_url(url: str) -> Destination:
    """Parse and resolve a webhook URL; raises UnsafeDestination (400, field url) when it may not be used."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnsafeDestination("The webhook URL must be an http:// or https:// URL with a host.", field="url")
    if parts.username or parts.password:
        raise UnsafeDestination("Put no credentials in the webhook URL; receivers verify the signature instead.",
                                field="url")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeDestination("The webhook URL's port is not a number from 1 to 65535.", field="url") from None
    host = parts.hostname
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeDestination(f"The webhook host {host!r} does not resolve.", field="url") from None
    addresses = sorted({info[4][0] for info in infos})
    if not settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS:
        refused = [address for address in addresses if _refused_address(address)]
        if refused:
            raise UnsafeDestination(
                f"The webhook host {host!r} resolves to {', '.join(refused)}, a private, loopback or link-local "
                "address; deliveries go to public addresses only (set WEBHOOK_ALLOW_PRIVATE_NETWORKS=1 to allow "
                "internal receivers).", field="url")
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return Destination(scheme=parts.scheme, host=host, port=port, target=target, address=addresses[0])


def post(url: str, *, body: bytes, headers: dict[str, str]) -> Answer:
    """POST `body` once; the receiver's status, or why there was none. Never raises for the network's failures."""
    try:
        destination = check_url(url)
    except UnsafeDestination as refusal:
        return Answer(None, refusal.message)
    timeout = urllib3.Timeout(connect=settings.WEBHOOK_TIMEOUT_SECONDS, read=settings.WEBHOOK_TIMEOUT_SECONDS)
    default_port = 443 if destination.scheme == "https" else 80
    host_header = destination.host if destination.port == default_port else f"{destination.host}:{destination.port}"
    if destination.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(destination.address, destination.port, timeout=timeout, retries=False,
                                           server_hostname=destination.host, assert_hostname=destination.host,
                                           cert_reqs="CERT_REQUIRED")
    else:
        pool = urllib3.HTTPConnectionPool(destination.address, destination.port, timeout=timeout, retries=False)
    try:
        response = pool.urlopen("POST", destination.target, body=body, redirect=False, retries=False,
                                headers={**headers, "Host": host_header}, preload_content=False)
        try:
            response.read(64 * 1024, decode_content=False)  # a receiver's answer is not kept; read a little
        finally:
            response.release_conn()
        retry_after = response.headers.get("Retry-After", "")
        return Answer(response.status, retry_after=int(retry_after) if retry_after.isdigit() else None)
    except urllib3.exceptions.NewConnectionError:  # (a subclass of ConnectTimeoutError: caught first)
        return Answer(None, "connection failed: the receiver refused it or is unreachable")
    except urllib3.exceptions.TimeoutError:
        return Answer(None, f"no answer within {settings.WEBHOOK_TIMEOUT_SECONDS} s")
    except urllib3.exceptions.HTTPError as error:
        return Answer(None, f"connection failed: {type(error).__name__}")
    finally:
        pool.close()
