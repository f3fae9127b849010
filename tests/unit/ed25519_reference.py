"""An independent Standard Webhooks ``v1a`` receiver for the tests: Ed25519 verification in plain
Python integers after RFC 8032 (section 5.1.7), sharing no code with ``cryptography`` (OpenSSL),
which signs. Slow (milliseconds per signature) and not constant-time: a test oracle only.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the group's order
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)

Point = tuple[int, int, int, int]  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


def _add(a: Point, b: Point) -> Point:
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    e1 = (y1 - x1) * (y2 - x2) % P
    e2 = (y1 + x1) * (y2 + x2) % P
    c = t1 * 2 * D * t2 % P
    dd = z1 * 2 * z2 % P
    e, f, g, h = e2 - e1, dd - c, dd + c, e2 + e1
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _times(scalar: int, point: Point) -> Point:
    result: Point = (0, 1, 1, 0)  # the neutral element
    while scalar:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _same(a: Point, b: Point) -> bool:
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def _x_of(y: int, sign: int) -> int | None:
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
    if (x * x - x2) % P:
        return None
    return P - x if (x & 1) != sign else x


def _decode(encoded: bytes) -> Point | None:
    if len(encoded) != 32:
        return None
    y = int.from_bytes(encoded, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    x = _x_of(y, sign)
    return None if x is None else (x, y, 1, x * y % P)


_GY = 4 * pow(5, P - 2, P) % P
BASE: Point = (_x_of(_GY, 0) or 0, _GY, 1, (_x_of(_GY, 0) or 0) * _GY % P)


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    if len(signature) != 64:
        return False
    key, r_point = _decode(public), _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if key is None or r_point is None or s >= L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % L
    return _same(_times(s, BASE), _add(r_point, _times(h, key)))


def receiver_accepts(public_key: str, headers: Mapping[str, str], body: bytes, now: int) -> bool:
    """The spec's receiver: headers by lower-case name, a timestamp within 5 minutes, and one
    ``v1a`` signature over ``{id}.{timestamp}.{body}`` that the ``whpk_`` key accepts."""
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id, timestamp = lowered["webhook-id"], lowered["webhook-timestamp"]
    if abs(now - int(timestamp)) > 300:
        return False
    public = base64.b64decode(public_key.removeprefix("whpk_"))
    content = f"{msg_id}.{timestamp}.".encode() + body
    for candidate in lowered["webhook-signature"].split(" "):
        version, _, value = candidate.partition(",")
        if version == "v1a" and ed25519_verify(public, content, base64.b64decode(value)):
            return True
    return False
