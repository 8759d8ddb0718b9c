"""GeoJSON text of polygon coordinates, formatted in bulk with numpy (no Python object per vertex), byte for byte
as GDAL's GeoJSON writer formats them with ``COORDINATE_PRECISION=7``: ``%.7f``, then GDAL's clean-up of
rounding noise (in strings longer than 10 characters, a fraction ending in ``00000d`` loses its last digit and
one ending in ``99999d`` is rounded up at the first decimal), then trailing zeros dropped (one decimal kept).
``tests/test_vectors.py`` checks this against GDAL on random and crafted values.
"""

from __future__ import annotations

import numpy as np

PRECISION = 7
_SCALE = 10 ** PRECISION
_TIE_TOLERANCE = 1e-6  # products this close to a half unit are rounded exactly, by Python's printf


def _rounded_units(values: np.ndarray) -> np.ndarray:
    """|value| in units of 1e-7, rounded as ``%.7f`` rounds (the decimal value of the double, half to even)."""
    scaled = np.abs(values) * _SCALE
    units = np.rint(scaled)
    tolerance = max(_TIE_TOLERANCE, float(scaled.max(initial=0.0)) * 4e-16)  # error of the product
    for i in np.flatnonzero(np.abs(scaled - units) > 0.5 - tolerance):
        units[i] = int(f"{abs(float(values[i])):.7f}".replace(".", ""))
    return units.astype(np.int64)


def _digit_count(values: np.ndarray) -> np.ndarray:
    count = np.ones(values.shape, np.int64)
    power = 10
    while True:
        more = values >= power
        if not more.any():
            return count
        count += more
        power *= 10


def _whole_and_fraction(values: np.ndarray, negative: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The whole part and the 7 decimals (as an integer) of ``%.7f``, after GDAL's clean-up of rounding noise:
    in a string longer than 10 characters, decimals 2-6 all 0 -> the 7th is dropped; all 9 -> one decimal is
    kept and rounded up."""
    units = _rounded_units(values)
    whole = units // _SCALE
    fraction = (units - whole * _SCALE).astype(np.int32)
    long = negative.astype(np.int64) + _digit_count(whole) + 1 + PRECISION > 10
    middle = fraction // 10 % 100_000
    fraction = np.where(long & (middle == 0), fraction - fraction % 10, fraction)
    up = long & (middle == 99_999)
    fraction = np.where(up, (fraction // 10 ** (PRECISION - 1) + 1) * 10 ** (PRECISION - 1), fraction)
    carry = fraction >= _SCALE
    return whole + carry, np.where(carry, fraction - _SCALE, fraction)


def number_bytes(values: np.ndarray) -> np.ndarray:
    """A (n, width) uint8 matrix: row i is the text of ``values[i]`` once its zero bytes (padding) are dropped."""
    values = np.asarray(values, dtype=np.float64)
    negative = np.signbit(values)
    whole, fraction = _whole_and_fraction(values, negative)
    whole_digits = _digit_count(whole)
    width = int(whole_digits.max(initial=1))
    out = np.zeros((len(values), 2 + width + PRECISION), np.uint8)
    out[:, 0] = np.where(negative, ord("-"), 0)
    for k in range(width):  # column 1 + k: the digit of 10**(width - 1 - k), blank before the first digit
        digit = (whole // 10 ** (width - 1 - k) % 10).astype(np.uint8) + ord("0")
        out[:, 1 + k] = np.where(whole_digits >= width - k, digit, 0)
    out[:, 1 + width] = ord(".")
    decimals = np.zeros(len(values), bool)  # a non-zero decimal at or after this one (the first always shows)
    for k in range(PRECISION - 1, -1, -1):
        digit = (fraction // 10 ** (PRECISION - 1 - k) % 10).astype(np.uint8)
        decimals |= (digit != 0) | (k == 0)
        out[:, 2 + width + k] = np.where(decimals, digit + ord("0"), 0)
    return out


SLICE = 262_144  # vertices formatted at once (bounds the temporary matrices to ~20 MB)
_LEADS = np.array([list(b", \0\0"), list(b", [ "), list(b"[ \0\0")], np.uint8)  # inside, new ring, new polygon


def polygon_texts(coords: np.ndarray, ring_offsets: np.ndarray, polygon_offsets: np.ndarray) -> list[bytes]:
    """``{ "type": "Polygon", "coordinates": [ [ [ x, y ], ... ] ] }`` for each polygon, as GDAL writes it."""
    n = len(coords)
    lead = np.zeros(n, np.uint8)  # which _LEADS row comes before each vertex
    lead[ring_offsets[:-1]] = 1
    lead[ring_offsets[polygon_offsets[:-1]]] = 2
    ring_ends = np.zeros(n, bool)
    ring_ends[ring_offsets[1:] - 1] = True
    pieces, lengths = [], []
    for start in range(0, n, SLICE):
        stop = min(start + SLICE, n)
        piece, length = _vertex_texts(coords[start:stop], lead[start:stop], ring_ends[start:stop])
        pieces.append(piece)
        lengths.append(length)
    blob = b"".join(pieces)
    vertex_starts = np.concatenate([[0], np.cumsum(np.concatenate(lengths) if lengths else np.zeros(0, np.int64))])
    bounds = vertex_starts[ring_offsets[polygon_offsets]]
    return [b'{ "type": "Polygon", "coordinates": [ ' + blob[bounds[i]:bounds[i + 1]] + b" ] }"
            for i in range(len(bounds) - 1)]


def _vertex_texts(coords: np.ndarray, lead: np.ndarray, ring_ends: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The text of each vertex (with the separator or ring opening before it and the ring closing after it),
    concatenated, and the byte length of each."""
    n = len(coords)
    tail = np.zeros((n, 2), np.uint8)
    tail[ring_ends] = np.frombuffer(b" ]", np.uint8)

    def fixed(text: bytes) -> np.ndarray:
        return np.broadcast_to(np.frombuffer(text, np.uint8), (n, len(text)))

    rows = np.hstack([_LEADS[lead], fixed(b"[ "), number_bytes(coords[:, 0]), fixed(b", "),
                      number_bytes(coords[:, 1]), fixed(b" ]"), tail])
    keep = rows != 0
    return rows[keep].tobytes(), keep.sum(axis=1)
