"""A client address to a country (and region and city where the database has them), and what is
kept of the address afterwards.

The database shipped with the package is `iptocc`'s: the country each Regional Internet Registry
assigned the address block to (the five RIRs' delegation files, refreshed nightly by its
maintainers), embedded in a 1.8 MB wheel, MIT or Apache-2.0, about 0.13 us a lookup here. RIR
data names who holds a block, not where it is used: its author cites about 95 % agreement with
MaxMind for IPv4, and 94.5 % of 19,716 random public IPv4 addresses agreed with geoip2fast's
GeoLite2-derived data here. `geoip2fast` was the other candidate: 12 MB, 2.6 us a lookup, with city
and ASN files, but its data is MaxMind's GeoLite2, whose licence (CC BY-SA 4.0 with MaxMind's
end-user agreement) binds whoever redistributes it. Where country accuracy matters more (anycast
and multinational blocks are the usual misses), `CONVERSIONS_GEOIP_DATABASE` points at a MaxMind
`.mmdb` file (GeoLite2 or GeoIP2 Country or City, or any file in that format), read with
`maxminddb`: its country, first subdivision and city are used, and the shipped data is not.

`mask` applies `CONVERSIONS_IP_MODE` to an address once it has been looked up: `drop` (nothing
kept), `truncate` (the /24 of an IPv4 address, the /48 of an IPv6 one: what GA's and Matomo's
anonymisation keep), or `keep`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple

IpMode = Literal["drop", "truncate", "keep"]
CACHE_SIZE = 65_536


class Place(NamedTuple):
    country: str | None
    region: str | None = None
    city: str | None = None


NOWHERE = Place(None)


def parse_address(raw: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a client or proxy writes it (IPv4, IPv6, an IPv4-mapped IPv6, with a zone or
    brackets), or None for anything else."""
    if not isinstance(raw, str) or not raw or len(raw) > 64:
        return None
    text = raw.strip().strip("[]").split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def mask(raw: str, mode: IpMode) -> str | None:
    """What `mode` keeps of an address (None: nothing)."""
    if mode == "keep":
        return raw
    if mode == "drop":
        return None
    address = parse_address(raw)
    if address is None:
        return None
    prefix = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


class GeoLookup:
    """Address -> Place, from the shipped RIR data or a MaxMind database file; cached per address."""

    def __init__(self, database: str | Path | None = None) -> None:
        self.database = str(database) if database else None
        self._find: Callable[[str], Place]
        if self.database:
            import maxminddb

            reader = maxminddb.open_database(self.database)
            self.source = f"maxminddb:{Path(self.database).name}"

            def find(address: str) -> Place:
                record = reader.get(address)
                return _from_record(record) if isinstance(record, dict) else NOWHERE

            self._find = find
        else:
            from iptocc import country_code

            self.source = "iptocc"

            def find(address: str) -> Place:
                code = country_code(address)
                return Place(code.upper()) if code else NOWHERE

            self._find = find
        self.lookup = lru_cache(maxsize=CACHE_SIZE)(self._lookup)

    def _lookup(self, raw: str) -> Place:
        address = parse_address(raw)
        if address is None or not address.is_global:
            return NOWHERE  # private, loopback, documentation ranges: no country to say
        return self._find(str(address))


def _name(node: Any) -> str | None:
    names = node.get("names") if isinstance(node, dict) else None
    if isinstance(names, dict):
        name = names.get("en") or next(iter(names.values()), None)
        return str(name)[:128] if name else None
    return None


def _from_record(record: dict[str, Any]) -> Place:
    """A GeoIP2/GeoLite2 Country or City record (and the shape of DB-IP's and IPinfo's .mmdb)."""
    country = record.get("country") or record.get("registered_country")
    code = country.get("iso_code") if isinstance(country, dict) else record.get("country_code")
    subdivisions = record.get("subdivisions")
    region = None
    if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
        region = subdivisions[0].get("iso_code") or _name(subdivisions[0])
    return Place(
        str(code).upper()[:8] if code else None,
        str(region)[:64] if region else None,
        _name(record.get("city")),
    )
