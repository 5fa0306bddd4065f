"""Where a completion callback may go: the destination policy, pure.

``model.specs`` refuses a ``callback_url`` whose host is a literal link-local or metadata address
(or a metadata service's name) at validate; ``settings`` reads ``RECONCILER_CALLBACK_ALLOW`` with
``parse_destinations``; ``imports.runs.posting`` asks ``Destinations.refusal`` about every address
a host name resolves to, at send time, and connects only to an address that passed.

Link-local addresses (where cloud metadata services answer) and the known metadata addresses and
names are never allowed, whatever the setting: no receiver needs them, and a credential is one
request away there. The setting's reach is ``public`` (public addresses only), ``private`` (the
default: public and private ranges, the usual place of an in-house receiver) or ``loopback`` (this
machine too: its database, its API and its other services listen there); host names and networks
listed beside the reach are allowed whatever their addresses (link-local and metadata aside).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["METADATA_HOSTS", "Destinations", "literal_refusal", "parse_destinations"]

Reach = Literal["public", "private", "loopback"]
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_REACHES: tuple[Reach, ...] = ("public", "private", "loopback")
METADATA_HOSTS = frozenset(
    {"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
     "instance-data.ec2.internal"}
)  # fmt: skip
# Metadata services outside link-local: Alibaba Cloud, AWS over IPv6, Oracle Cloud (legacy).
_METADATA = tuple(
    ipaddress.ip_network(n) for n in ("100.100.100.200/32", "fd00:ec2::254/128", "192.0.0.192/32")
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HOST = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")
# inet_aton's shorthands (2852039166, 0xa9.254.169.254, 169.254.43518): the system resolver
# takes them as addresses, so a check that reads only dotted decimals would be walked around.
_SHORTHAND = re.compile(r"(0[xX][0-9a-fA-F]*|[0-9]+)(\.(0[xX][0-9a-fA-F]*|[0-9]+)){0,3}\.?")


def _unwrapped(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped or NAT64 IPv6 address, else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _never(address: Address) -> str | None:
    """Why no setting opens ``address``, or ``None``."""
    if any(address in net for net in _METADATA):
        return f"{address} is a cloud metadata service's address"
    if address.is_link_local:
        return f"{address} is link-local, where cloud metadata services answer"
    reserved = address.is_reserved and not _is_loopback(address)  # IPv6's ::/8 holds ::1
    if address.is_multicast or reserved or str(address) == "255.255.255.255":
        return f"{address} is not a unicast address"
    return None


def _is_loopback(address: Address) -> bool:
    return address.is_loopback or address.is_unspecified or address in _THIS_NETWORK


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")  # "this host": a connect reaches loopback


@dataclass(frozen=True, slots=True)
class Destinations:
    """``RECONCILER_CALLBACK_ALLOW``: a reach, and hosts and networks allowed beside it."""

    reach: Reach = "private"
    hosts: frozenset[str] = frozenset()
    networks: tuple[Network, ...] = ()

    def refusal(self, host: str, address: Address) -> str | None:
        """Why a callback to ``host`` must not connect to ``address`` (one it resolved to)."""
        address = _unwrapped(address)
        never = literal_refusal(host) or _never(address)
        if never:
            return f"{never}; callbacks are never sent there"
        if host.lower().rstrip(".") in self.hosts or any(address in n for n in self.networks):
            return None
        if _is_loopback(address) and self.reach != "loopback":
            return (
                f"{address} is this machine (loopback); set RECONCILER_CALLBACK_ALLOW=loopback "
                "or list the host there to allow it"
            )
        if not address.is_global and self.reach == "public":
            return (
                f"{address} is a private address; set RECONCILER_CALLBACK_ALLOW=private or list "
                "the host or its network there to allow it"
            )
        return None


def literal_refusal(host: str) -> str | None:
    """Why a URL with ``host`` is refused whatever it resolves to, or ``None``: a metadata
    service's name, a link-local, metadata or multicast address, or an IPv4 shorthand."""
    name = host.lower().rstrip(".")
    if name in METADATA_HOSTS:
        return f"{name} is a cloud metadata service's name"
    try:
        address = _unwrapped(ipaddress.ip_address(name.partition("%")[0]))
    except ValueError:
        if _SHORTHAND.fullmatch(name):
            return f"{name} is a shorthand IPv4 address: write it as four decimal numbers"
        return None
    return _never(address)


def _host(entry: str) -> str:
    name = entry.rstrip(".")
    if "/" in entry or ":" in entry or not _HOST.fullmatch(name):
        raise ValueError(
            f"{entry!r} is not one of {', '.join(_REACHES)}, a host name or a network such as "
            "10.20.0.0/16 (host bits clear)"
        )
    if name in METADATA_HOSTS:
        raise ValueError(f"{entry!r} is a cloud metadata service: it is never allowed")
    return name


def parse_destinations(text: str) -> Destinations:
    """Read the setting: comma-separated, at most one reach word, then host names and networks
    (``10.20.0.0/16``, ``hooks.internal``). ``ValueError`` says which entry cannot work."""
    reach: Reach | None = None
    hosts: set[str] = set()
    networks: list[Network] = []
    for entry in (e.strip().lower() for e in text.split(",")):
        if not entry:
            continue
        if entry in _REACHES:
            if reach is not None:
                raise ValueError(f"gives two reaches ({reach}, {entry}): give one at most")
            reach = entry
            continue
        try:
            network = ipaddress.ip_network(entry, strict=True)
        except ValueError:
            hosts.add(_host(entry))
            continue
        if _never(_unwrapped(network.network_address)) and _never(
            _unwrapped(network.broadcast_address)
        ):
            raise ValueError(
                f"{entry!r} is link-local, metadata or multicast: callbacks are never sent there"
            )
        networks.append(network)
    return Destinations(reach or "private", frozenset(hosts), tuple(networks))
