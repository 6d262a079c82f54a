"""Large values: encoded off the event loop, and refused beyond the engine's limit.

An atom's result is encoded where the engine journals it, on the loop's thread, which is
cheap for the values most tasks return. When a quick estimate
(:func:`~aioflow._codec.size_hint`) says a result is large, :func:`encode_large` encodes
it in a worker thread instead, so other flows and atoms go on meanwhile, and hands the
journal the text (:class:`~aioflow._codec.Encoded`). Beyond ``Engine(max_value_bytes=...)``
the value is refused with :class:`~aioflow.SerializationError` and nothing of it is
journaled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio.to_thread

from ._codec import Codec, Encoded, JsonCodec, encode_in_pieces
from ._errors import SerializationError

DEFAULT_MAX_VALUE_BYTES = 64 * 1024 * 1024
"""The default ``Engine(max_value_bytes=...)``: 64 MiB of encoded text per value.

Far above what a journal row usually holds, and low enough that a value's encoding (a
few tenths of a second, its text and pieces of it taking a few times the value's size in
memory meanwhile) and every later load of its flow stay affordable."""

OFF_LOOP_BYTES = 16 * 1024
"""From this estimate on a value is encoded in a worker thread: the JSON codec writes
about 300 MB/s of bytes or strings and 30 MB/s of nested lists, so below it encoding on
the loop costs less than the thread's round trip."""

_MEASURE_SHARE = 16
"""Values estimated under 1/16 of the limit are not measured: the JSON codec writes a
value in at most about 12 times its estimate (a string of astral characters written
escaped; bytes take 4/3), plus a few dozen bytes of tags."""


def measure_from(limit: int | None) -> int:
    """The estimate from which a value goes through :func:`encode_large` under ``limit``."""
    return OFF_LOOP_BYTES if limit is None else min(OFF_LOOP_BYTES, limit // _MEASURE_SHARE)


def check_limit(max_value_bytes: object) -> int | None:
    """``max_value_bytes`` if it is a limit (a positive int, or None for none); else
    ValueError naming it."""
    if max_value_bytes is None:
        return None
    if (
        isinstance(max_value_bytes, bool)
        or not isinstance(max_value_bytes, int)
        or max_value_bytes < 1
    ):
        raise ValueError(
            "max_value_bytes must be a positive number of bytes, or None for no limit, "
            f"not {max_value_bytes!r}"
        )
    return max_value_bytes


async def encode_large(
    codec: Codec,
    flow_id: str,
    atom: str,
    details: Mapping[str, Any],
    hint: int | None,
    limit: int | None,
    *,
    completion: bool = False,
) -> Encoded:
    """``details`` (an atom's result, estimated at ``hint`` bytes, None when unknown)
    encoded, in a worker thread when large. Beyond ``limit`` bytes raises
    SerializationError naming the atom, its size and the limit; so does a value the
    codec refuses. ``completion``: the result came from ``engine.complete``."""
    # The estimate is a lower bound only for the JSON codec; another may compress.
    if limit is not None and hint is not None and hint > limit and type(codec) is JsonCodec:
        raise _too_large(flow_id, atom, hint, limit, completion, at_least=True)

    def encode() -> str:
        try:
            pieces = encode_in_pieces(codec, details)
        except (TypeError, ValueError) as exc:  # as the journal says it (encode_details)
            raise SerializationError(
                f"cannot store the ATOM event details of atom {atom!r}: {exc}", atom=atom
            ) from exc
        size = sum(
            len(p) if p.isascii() else len(p.encode("utf-8", "surrogatepass")) for p in pieces
        )
        if limit is not None and size > limit:
            raise _too_large(flow_id, atom, size, limit, completion, at_least=False)
        return _joined(pieces)

    if hint is None or hint >= OFF_LOOP_BYTES:
        text = await anyio.to_thread.run_sync(encode)
    else:
        text = encode()
    return Encoded(details, text)


def _joined(pieces: list[str]) -> str:
    """The pieces as one string (emptying the list), holding the GIL briefly at a time.

    ``"".join`` would copy the whole text in one call, about a millisecond a megabyte
    with the event loop's thread waiting for the GIL. Instead pieces are joined a few
    megabytes at a time, and those appended with ``+=``, which CPython does in place on
    a string nothing else refers to (resizing a large one remaps its memory). Where it
    copies instead (another Python, a tracer), each step copies what is joined so far:
    slower in all, yet the loop never waits longer than for one join. Pinned by
    ``test_a_100_mb_result_does_not_block_the_event_loop``.
    """
    groups = ["".join(pieces[i : i + 16]) for i in range(0, len(pieces), 16)]
    pieces.clear()
    text = ""
    for i, group in enumerate(groups):
        groups[i] = ""  # so that only `group` refers to it, and then only `text`
        text += group
    return text


# CPython appends in place only once it has specialized the `+=` above, which it does
# after a few rounds of the loop; until then each step copies the text joined so far. On
# a process's first large value, that held the GIL up to 17 ms a step instead of 2. One
# run over small pieces at import does the warming, in microseconds.
_joined(["."] * 16 * 12)


def _too_large(
    flow_id: str, atom: str, size: int, limit: int, completion: bool, *, at_least: bool
) -> SerializationError:
    if completion:
        what = f"the result completing the wait of atom {atom!r} of flow {flow_id} is"
        instead = "complete the wait with a reference to it"
    else:
        what = f"atom {atom!r} of flow {flow_id} returned a result of"
        instead = "return a reference to it"
    return SerializationError(
        f"{what} {'at least ' if at_least else ''}{size:,} bytes once encoded, over the "
        f"limit of {limit:,} bytes: store large data elsewhere (a file, an object store) "
        f"and {instead}, or raise the limit with Engine(max_value_bytes=...) (None for "
        "no limit)",
        atom=atom,
    )
