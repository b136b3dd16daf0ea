"""
Endpoint descriptions for the operator's services (the manhole, the
operations endpoint): well-formed, and on loopback unless allowed.
"""

from __future__ import annotations

import ipaddress

from twisted.internet import endpoints

__all__ = ["check_endpoint", "is_loopback"]


def is_loopback(host: str) -> bool:
    """
    Whether C{host} (an IPv4 or IPv6 address, IPv4-mapped included) is a
    loopback address.
    """
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback


def _split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description into its positional and keyword arguments,
    honouring backslash escapes (C{tcp6:2222:interface=\\:\\:1}).
    """
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    args, kwargs = [], {}
    for part in parts:
        name, equals, value = part.partition("=")
        if equals:
            kwargs[name] = value
        else:
            args.append(part)
    return args, kwargs


class _NoReactor:
    """
    Stands in for the reactor while a description is parsed: parsing
    builds an endpoint but never uses its reactor.
    """


def check_endpoint(
    description: str, allow_remote: bool = False, flag: str = "--manhole-allow-remote"
) -> None:
    """
    Check that C{description} is a server endpoint that listens on loopback
    only (TCP on C{127.0.0.0/8} or C{::1}, or a UNIX socket), unless
    C{allow_remote}.

    @param flag: the option that allows a remote address, for the message.
    @raise ValueError: saying what is wrong and what to write instead.
    """
    try:
        endpoints.serverFromString(_NoReactor(), description)
    except Exception as error:
        raise ValueError(
            f"{description!r} is not a server endpoint ({error}): write it like "
            "tcp:2222:interface=127.0.0.1"
        ) from None
    if allow_remote:
        return
    args, kwargs = _split_description(description)
    kind = args[0].lower()
    if kind == "unix":
        return
    if kind in ("tcp", "tcp6"):
        # tcp:PORT[:INTERFACE[:BACKLOG]], or with keywords.
        interface = kwargs.get("interface", args[2] if len(args) > 2 else "")
        try:
            loopback = bool(interface) and is_loopback(interface)
        except ValueError:
            loopback = False
        if loopback:
            return
        where = f"on {interface!r}" if interface else "on every address"
        raise ValueError(
            f"{description!r} listens {where}, not only on loopback: add "
            "interface=127.0.0.1 (or interface=\\:\\:1 for tcp6), or pass "
            f"{flag} if remote access is intended"
        )
    raise ValueError(
        f"{description!r}: cannot tell whether a {kind!r} endpoint listens on "
        "loopback only; use tcp:PORT:interface=127.0.0.1, or pass "
        f"{flag} if that is intended"
    )
