"""The content fingerprint of a scene: sha256 of its size, its first :data:`SAMPLE_BYTES` and its last ones
(:func:`sampled_fingerprint`). Local files (:func:`rrsis_cli.inputs.content_fingerprint`) and remote objects
(:func:`rrsis_cli.remote.remote_fingerprint`, from ranged reads) are both hashed here, so a URL and a local copy of
the same bytes share their fingerprint, and their scene key."""

from __future__ import annotations

import hashlib

SAMPLE_BYTES = 1 << 20


def tail_start(size: int, sample: int = SAMPLE_BYTES) -> int:
    """Where the sampled tail of an object of ``size`` bytes starts: the last ``sample`` bytes, never overlapping
    the first ``sample`` (so a file of less than two samples is hashed once, whole)."""
    return max(sample, size - sample)


def sampled_fingerprint(size: int, head: bytes, tail: bytes) -> str:
    """The content fingerprint of a file or object of ``size`` bytes: sha256 hex of its size, its first
    :data:`SAMPLE_BYTES` (``head``) and its bytes from :func:`tail_start` to the end (``tail``, empty when
    ``size <= SAMPLE_BYTES``)."""
    digest = hashlib.sha256(str(size).encode())
    digest.update(head)
    digest.update(tail)
    return digest.hexdigest()
