"""
The network a client address belongs to, as routing sees it: the key by
which the flap signal and the round-trip memory group clients.
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["client_prefix"]


@functools.lru_cache(maxsize=8192)
def client_prefix(host: str, ipv4_length: int = 24, ipv6_length: int = 64) -> str:
    """
    The prefix of C{host} (C{"192.0.2.0/24"}, C{"2001:db8::/64"}) at the
    given lengths.  Asked for every transfer: parsed addresses are cached,
    since C{ipaddress} takes tens of microseconds a call.
    """
    address = ipaddress.ip_address(host.split("%", 1)[0])
    length = ipv4_length if address.version == 4 else ipv6_length
    return str(ipaddress.ip_network((address, length), strict=False))
