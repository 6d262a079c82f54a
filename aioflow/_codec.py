"""Codecs: how values (task results, flow inputs, event details) become journal text.

The journal stores every value as text. :class:`JsonCodec` (the default) writes plain,
compact JSON, so SQLite's JSON functions can read what it stores. Values JSON has no
form for are written as an object with one reserved tag key::

    (1, 2)              -> {"__aioflow__":"tuple","v":[1,2]}
    b"hi"               -> {"__aioflow__":"bytes","v":"aGk="}
    {1: "a"}            -> {"__aioflow__":"dict","v":[[1,"a"]]}
    float("inf")        -> {"__aioflow__":"float","v":"inf"}
    Point(x=1, y=2)     -> {"__aioflow__":"dataclass","cls":"app.geo:Point","v":{"x":1,"y":2}}

A dict of the caller's that itself holds the tag key is written in the ``"dict"`` form,
so it is never mistaken for a tagged value. :class:`PickleCodec` stores any picklable
value as base64 text, for those who ask for it by name; :func:`get_codec` turns a
codec spec (``None``, ``"json"``, ``"pickle"`` or a codec object) into a codec.
:func:`size_hint` estimates cheaply how large a value's text will be, and
:func:`encode_in_pieces` makes the text of a large one in short steps, for a worker
thread (see :mod:`aioflow._values`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import enum
import importlib
import json
import json.encoder
import math
import sys
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import SerializationError

if TYPE_CHECKING:
    # At run time these are imported where values of their types are encoded or
    # decoded: together they cost several ms, and `import aioflow` should not pay it.
    import datetime
    import decimal
    import uuid

__all__ = ["Codec", "JsonCodec", "PickleCodec", "get_codec"]

TAG = "__aioflow__"
"""The reserved key that marks a JSON object as an encoded non-JSON value."""

MAX_DEPTH = 500
"""How deep JSON objects and arrays may nest in an encoded value."""

_QUOTED_TAG = f'"{TAG}"'

NO_RESULT: Mapping[str, Any] = {"result": None}
"""The details of a success whose task returned None, shared by all of them: never
handed to listeners (they get a copy), never changed."""
_NO_RESULT_JSON = '{"result":null}'


class Encoded(Mapping[str, Any]):
    """Event details already encoded by the journal's codec (a large value encoded off
    the event loop): reads as the details themselves, and a journal stores ``text``
    as it is instead of encoding them again."""

    __slots__ = ("details", "text")

    def __init__(self, details: Mapping[str, Any], text: str) -> None:
        self.details = details
        self.text = text

    def __getitem__(self, key: str) -> Any:
        return self.details[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.details)

    def __len__(self) -> int:
        return len(self.details)

    def __repr__(self) -> str:  # never the value: it is large
        return f"Encoded({len(self.text):,} characters)"


_SEQUENCES = (list, tuple, set, frozenset)


def size_hint(value: object, nodes: int = 256) -> int | None:
    """A quick estimate of how many bytes ``value`` takes once encoded, or None when
    telling would mean looking at more than ``nodes`` of its parts.

    Cheap for small values (an int or a short string costs a type check). Bytes and
    strings count by their length (bytes as base64), containers by what they hold, and
    other objects by their own size (``sys.getsizeof``) and their attributes. The
    :class:`JsonCodec` never encodes JSON types, bytes and containers of them to fewer
    bytes than the estimate.
    """
    if type(value) is str:
        return len(value) + 2
    if type(value) is int:
        return (value.bit_length() >> 2) + 1  # bits / 4: fewer than its decimal digits
    total = 0
    stack = [value]
    # Scalars are counted in place, as cheaply as can be (a number as the one character
    # it takes at least): most results are small containers of them, and every result
    # is estimated.
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            nodes -= 2 * len(v)
            if nodes < 0:
                return None
            total += 1 + 2 * len(v)  # braces, and a colon and a comma each
            for k, x in v.items():
                if type(k) is str:
                    total += len(k) + 2
                else:
                    stack.append(k)
                t = type(x)
                if t is str:
                    total += len(x) + 2
                elif t is int or t is float or t is bool or x is None:
                    total += 1
                else:
                    stack.append(x)
        elif isinstance(v, _SEQUENCES):
            nodes -= len(v)
            if nodes < 0:
                return None
            total += 1 + len(v)
            for x in v:
                t = type(x)
                if t is str:
                    total += len(x) + 2
                elif t is int or t is float or t is bool or x is None:
                    total += 1
                else:
                    stack.append(x)
        else:
            size, attrs = _leaf_hint(v)
            nodes -= 1 + len(attrs)
            if nodes < 0:
                return None
            total += size
            stack.extend(attrs)
    return total


_NO_ATTRS: tuple[object, ...] = ()


def _leaf_hint(v: object) -> tuple[int, Collection[object]]:
    """:func:`size_hint` of ``v``, neither a dict nor a sequence, without its attributes,
    and the attributes still to look into."""
    if isinstance(v, str):
        return len(v) + 2, _NO_ATTRS
    if isinstance(v, int):  # bool too
        return (v.bit_length() >> 2) + 1, _NO_ATTRS
    if isinstance(v, float) or v is None:
        return 3, _NO_ATTRS
    if isinstance(v, bytes | bytearray):
        return (len(v) + 2) // 3 * 4, _NO_ATTRS  # as base64
    if isinstance(v, memoryview):
        return (v.nbytes + 2) // 3 * 4, _NO_ATTRS
    # Datetimes, enums, dataclasses, anything a custom codec stores.
    try:
        size = sys.getsizeof(v, 64)
        attrs = getattr(v, "__dict__", None)
        if type(attrs) is dict:
            return size, attrs.values()
        return size, [getattr(v, name, None) for name in _dataclass_slots(type(v))]
    except Exception:  # an odd object's own doing: the codec will judge it
        return 64, _NO_ATTRS


def _dataclass_slots(t: type) -> tuple[str, ...]:
    """The fields of a dataclass without ``__dict__`` (slots=True); () for other types."""
    return _dataclass_fields(t) if dataclasses.is_dataclass(t) else ()


class Codec(Protocol):
    """Turns values into text for the journal and back."""

    name: str

    def encode(self, value: object) -> str: ...

    def decode(self, data: str) -> object: ...


# --------------------------------------------------------------------------- JSON text


def _refuse(o: object) -> object:
    if type(o) is _Base64:  # a large bytes value written whole (see _write for pieces)
        return "".join(o.pieces())
    raise TypeError(f"not JSON: {type(o).__name__}")


def _make_dumps(ensure_ascii: bool) -> Callable[[object], str]:
    """A one-shot compact JSON writer that refuses NaN/inf and non-JSON types.

    Uses the C encoder directly where there is one (three times faster than
    ``json.dumps`` with keyword arguments); circularity is checked by the caller.
    """
    make: Any = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        quote = (
            json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
        )
        encoder = make(None, _refuse, quote, None, ":", ",", False, False, False)

        def dumps(value: object) -> str:
            return "".join(encoder(value, 0))

        return dumps
    fallback = json.JSONEncoder(
        separators=(",", ":"),
        ensure_ascii=ensure_ascii,
        allow_nan=False,
        check_circular=False,
        default=_refuse,
    )
    return fallback.encode


_dumps = _make_dumps(ensure_ascii=False)
_dumps_ascii = _make_dumps(ensure_ascii=True)


def _text(tree: object) -> str:
    """Write a JSON-ready tree; ``\\u`` escapes keep lone surrogates storable as UTF-8."""
    out = _dumps(tree)
    if not out.isascii():
        try:
            out.encode("utf-8")
        except UnicodeEncodeError:
            return _dumps_ascii(tree)
    return out


# --------------------------------------------------------------------------- encoding


class _Unencodable(Exception):
    """Raised inside the walk; collects the path on its way out."""

    def __init__(self, subject: str, reason: str) -> None:
        super().__init__(subject, reason)
        self.subject = subject
        self.reason = reason
        self.segments: list[str] = []  # innermost first


def _type_name(t: type) -> str:
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _format_path(segments: list[str]) -> str:
    parts = segments[::-1]
    if len(parts) > 12:
        parts = [*parts[:6], "...", *parts[-4:]]
    return "value" + "".join(parts)


_class_paths: dict[type, str] = {}


def _class_path(cls: type) -> str:
    """``module:QualName`` of a class that can be imported again to decode it."""
    path = _class_paths.get(cls)
    if path is not None:
        return path
    qualname = cls.__qualname__
    if "<locals>" in qualname:
        raise _Unencodable(
            f"a {_type_name(cls)}",
            "the class is defined inside a function, so decoding cannot import it; "
            "define it at module level",
        )
    found: object = sys.modules.get(cls.__module__)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not cls:
        raise _Unencodable(
            f"a {_type_name(cls)}",
            f"{cls.__module__}:{qualname} does not name this class, so decoding cannot import it",
        )
    path = _class_paths[cls] = f"{cls.__module__}:{qualname}"
    return path


_init_fields: dict[type, tuple[str, ...]] = {}


def _dataclass_fields(cls: type) -> tuple[str, ...]:
    names = _init_fields.get(cls)
    if names is None:
        names = _init_fields[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.init)
    return names


def _tagged(tag: str, v: object) -> dict[str, object]:
    return {TAG: tag, "v": v}


def _add_fine_offset(out: dict[str, object], offset: datetime.timedelta | None) -> None:
    """Store a UTC offset with microseconds exactly (fromisoformat may drop them)."""
    if offset is not None and offset.microseconds:
        out["off"] = [offset.days, offset.seconds, offset.microseconds]


def _zone_key(tz: datetime.tzinfo | None) -> str | None:
    """The key of ``tz`` if it is a ``ZoneInfo`` with one, else None."""
    # A ZoneInfo exists only once zoneinfo is loaded, so never load it just to ask.
    if tz is None or "zoneinfo" not in sys.modules:
        return None
    import zoneinfo

    return tz.key if isinstance(tz, zoneinfo.ZoneInfo) else None


def _ordered(items: Iterable[Any]) -> list[Any]:
    """Set elements, sorted when they sort, so equal sets give equal text."""
    items = list(items)
    with contextlib.suppress(Exception):  # mixed or unorderable: keep as found
        items.sort()
    return items


_FLAT = frozenset({type(None), bool, int, str, float})
_SCALAR = frozenset({type(None), bool, int, str})


def _walk(value: object, depth: int, active: set[int]) -> object:
    """Turn ``value`` into a tree of JSON types; ``depth`` counts JSON levels above it."""
    t = type(value)
    if t in _SCALAR:
        return value
    if t is float:
        if math.isfinite(value):  # type: ignore[arg-type]
            return value
        return _tagged("float", repr(value))
    if depth >= MAX_DEPTH:
        raise _Unencodable("a value", f"it nests more than {MAX_DEPTH} levels deep")

    if t is list or t is tuple or t is set or t is frozenset or t is dict:
        key = id(value)
        if key in active:
            raise _Unencodable(f"a {t.__name__}", "it contains itself (a reference cycle)")
        active.add(key)
        try:
            if t is dict:
                return _walk_dict(value, depth, active)  # type: ignore[arg-type]
            items: Iterable[object] = value  # type: ignore[assignment]
            if t is list:
                inner = depth + 1
            else:
                inner = depth + 2
                if t is not tuple:
                    items = _ordered(items)
            out: list[object] = []
            for i, item in enumerate(items):
                try:
                    out.append(_walk(item, inner, active))
                except _Unencodable as exc:
                    exc.segments.append(f"[{i}]" if t is list or t is tuple else "{*}")
                    raise
            return out if t is list else _tagged(t.__name__, out)
        finally:
            active.discard(key)

    if t is bytes or t is bytearray:
        data: bytes | bytearray = value  # type: ignore[assignment]
        if len(data) >= _PIECE_BYTES:
            return _tagged(t.__name__, _Base64(data))
        return _tagged(t.__name__, base64.b64encode(data).decode("ascii"))
    # A value of a datetime, uuid or decimal type exists only once its module is
    # loaded, so these imports find it in sys.modules; other values never load them.
    module = t.__module__
    if module == "datetime":
        import datetime

        if t is datetime.datetime:
            dt: datetime.datetime = value  # type: ignore[assignment]
            out_dt = _tagged("datetime", dt.isoformat())
            zone = _zone_key(dt.tzinfo)
            if zone:
                out_dt["tz"] = zone
            else:
                _add_fine_offset(out_dt, dt.utcoffset())
            return out_dt
        if t is datetime.date:
            return _tagged("date", value.isoformat())  # type: ignore[attr-defined]
        if t is datetime.time:
            tm: datetime.time = value  # type: ignore[assignment]
            if tm.tzinfo is not None and tm.utcoffset() is None:
                raise _Unencodable(
                    "a datetime.time", f"its tzinfo {tm.tzinfo!r} has no fixed offset"
                )
            out_tm = _tagged("time", tm.isoformat())
            _add_fine_offset(out_tm, tm.utcoffset())
            return out_tm
        if t is datetime.timedelta:
            td: datetime.timedelta = value  # type: ignore[assignment]
            return _tagged("timedelta", [td.days, td.seconds, td.microseconds])
    elif module == "uuid":
        import uuid

        if t is uuid.UUID:
            return _tagged("uuid", str(value))
    elif module == "decimal":
        import decimal

        if t is decimal.Decimal:
            return _tagged("decimal", str(value))

    if isinstance(value, enum.Enum):
        out_e: dict[str, object] = {TAG: "enum", "cls": _class_path(t)}
        try:
            out_e["v"] = _walk(value.value, depth + 1, active)
        except _Unencodable as exc:
            exc.segments.append(".value")
            raise
        return out_e
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out_dc: dict[str, object] = {TAG: "dataclass", "cls": _class_path(t)}
        fields = {name: getattr(value, name) for name in _dataclass_fields(t)}
        key = id(value)
        if key in active:
            raise _Unencodable(f"a {_type_name(t)}", "it contains itself (a reference cycle)")
        active.add(key)
        try:
            out_dc["v"] = _walk_dict(fields, depth + 1, active, attrs=True)
        finally:
            active.discard(key)
        return out_dc
    if isinstance(value, tuple) and hasattr(t, "_fields"):  # a namedtuple
        out_nt: dict[str, object] = {TAG: "namedtuple", "cls": _class_path(t)}
        out_nt["v"] = _walk(tuple(value), depth + 1, active)
        return out_nt

    raise _Unencodable(
        f"a value of type {_type_name(t)}",
        "the json codec stores JSON types, tuples, sets, bytes, dates and times, UUIDs, "
        "decimals, enums and dataclasses (or use the 'pickle' codec)",
    )


def _walk_dict(
    value: dict[Any, Any], depth: int, active: set[int], *, attrs: bool = False
) -> object:
    plain = TAG not in value
    if plain:
        for k in value:
            if type(k) is not str:
                plain = False
                break
    if plain:
        out: dict[str, object] = {}
        for k, v in value.items():
            try:
                out[k] = _walk(v, depth + 1, active)
            except _Unencodable as exc:
                exc.segments.append(f".{k}" if attrs else f"[{json.dumps(k, ensure_ascii=False)}]")
                raise
        return out
    # Non-str keys, or the reserved key itself: a tagged list of [key, value] pairs.
    pairs: list[object] = []
    for k, v in value.items():
        try:
            ek = _walk(k, depth + 3, active)
        except _Unencodable as exc:
            exc.segments.append("[<key>]")
            raise
        try:
            ev = _walk(v, depth + 3, active)
        except _Unencodable as exc:
            label = json.dumps(k, ensure_ascii=False) if type(k) is str else repr(k)
            exc.segments.append(f".{k}" if attrs else f"[{label}]")
            raise
        pairs.append([ek, ev])
    return _tagged("dict", pairs)


# --------------------------------------------------------------------------- decoding


class _Undecodable(Exception):
    pass


_classes: dict[tuple[str, str], type] = {}


def _load_class(path: object, kind: str, check: Callable[[type], bool]) -> type:
    cached = _classes.get((kind, path)) if isinstance(path, str) else None
    if cached is not None:
        return cached
    if not isinstance(path, str) or path.count(":") != 1:
        raise _Undecodable(f"bad class path {path!r}")
    module_name, qualname = path.split(":")
    found: object = importlib.import_module(module_name)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not isinstance(found, type) or not check(found):
        raise _Undecodable(f"{path} is not {kind}")
    _classes[(kind, path)] = found
    return found


def _is_enum(cls: type) -> bool:
    return issubclass(cls, enum.Enum)


def _is_dataclass(cls: type) -> bool:
    return dataclasses.is_dataclass(cls)


def _is_namedtuple(cls: type) -> bool:
    return issubclass(cls, tuple) and hasattr(cls, "_fields")


# The decoders of stdlib types import their modules here, not at the top: see above.


def _decode_datetime(obj: dict[str, Any]) -> datetime.datetime:
    import datetime

    dt = datetime.datetime.fromisoformat(obj["v"])
    tz = obj.get("tz")
    if tz is not None:
        import zoneinfo

        return dt.astimezone(zoneinfo.ZoneInfo(tz))
    off = obj.get("off")
    if off is not None:
        dt = dt.replace(tzinfo=datetime.timezone(datetime.timedelta(*off)))
    return dt


def _decode_date(obj: dict[str, Any]) -> datetime.date:
    import datetime

    return datetime.date.fromisoformat(obj["v"])


def _decode_time(obj: dict[str, Any]) -> datetime.time:
    import datetime

    tm = datetime.time.fromisoformat(obj["v"])
    off = obj.get("off")
    if off is not None:
        tm = tm.replace(tzinfo=datetime.timezone(datetime.timedelta(*off)))
    return tm


def _decode_timedelta(obj: dict[str, Any]) -> datetime.timedelta:
    import datetime

    return datetime.timedelta(*obj["v"])


def _decode_uuid(obj: dict[str, Any]) -> uuid.UUID:
    import uuid

    return uuid.UUID(obj["v"])


def _decode_decimal(obj: dict[str, Any]) -> decimal.Decimal:
    import decimal

    return decimal.Decimal(obj["v"])


def _decode_float(obj: dict[str, Any]) -> float:
    v = obj["v"]
    if v not in ("inf", "-inf", "nan"):
        raise _Undecodable(f"bad float {v!r}")
    return float(v)


_DECODERS: dict[str, Callable[[dict[str, Any]], object]] = {
    "tuple": lambda o: tuple(o["v"]),
    "set": lambda o: set(o["v"]),
    "frozenset": lambda o: frozenset(o["v"]),
    "dict": lambda o: {k: v for k, v in o["v"]},
    "float": _decode_float,
    "bytes": lambda o: base64.b64decode(o["v"], validate=True),
    "bytearray": lambda o: bytearray(base64.b64decode(o["v"], validate=True)),
    "datetime": _decode_datetime,
    "date": _decode_date,
    "time": _decode_time,
    "timedelta": _decode_timedelta,
    "uuid": _decode_uuid,
    "decimal": _decode_decimal,
    "enum": lambda o: _load_class(o["cls"], "an enum", _is_enum)(o["v"]),
    "dataclass": lambda o: _load_class(o["cls"], "a dataclass", _is_dataclass)(**o["v"]),
    "namedtuple": lambda o: _load_class(o["cls"], "a namedtuple", _is_namedtuple)(*o["v"]),
}


def _object_hook(obj: dict[str, Any]) -> object:
    tag = obj.get(TAG)
    if tag is None:
        return obj
    decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
    if decoder is None:
        raise _Undecodable(f"unknown tag {tag!r}")
    return decoder(obj)


_plain_decoder = json.JSONDecoder()
_plain_scan: Callable[[str, int], tuple[object, int]] = _plain_decoder.scan_once  # type: ignore[attr-defined]
_tagged_decoder = json.JSONDecoder(object_hook=_object_hook)


# --------------------------------------------------------------------------- in pieces

_PIECE = 256 * 1024
"""About how many characters of text one call into C makes when a large value is
encoded in pieces: a few milliseconds of work, after which a worker thread lets the
event loop's thread have the GIL."""
_PIECE_BYTES = _PIECE // 4 * 3  # as many bytes as make _PIECE characters of base64


class _Base64:
    """A large bytes value in a walked tree: its base64 text is made when written, in
    pieces by :func:`_write`, whole by the JSON encoder."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray) -> None:
        self.data = data

    def pieces(self) -> list[str]:
        view = memoryview(self.data)
        return [
            base64.b64encode(view[i : i + _PIECE_BYTES]).decode("ascii")
            for i in range(0, len(view), _PIECE_BYTES)
        ]

    def __sizeof__(self) -> int:  # what size_hint counts: the length of its text
        return (len(self.data) + 2) // 3 * 4


def _write(tree: object, out: list[str]) -> None:
    """Append the JSON text of ``tree`` (a tree :func:`_walk` made) to ``out``, in
    pieces of about :data:`_PIECE` characters."""
    hint = size_hint(tree, 64)
    if hint is not None and hint <= _PIECE:
        out.append(_text(tree))
        return
    if type(tree) is str:
        out.append('"')
        for i in range(0, len(tree), _PIECE):
            out.append(_text(tree[i : i + _PIECE])[1:-1])
        out.append('"')
    elif type(tree) is _Base64:
        out.append('"')
        out.extend(tree.pieces())
        out.append('"')
    elif type(tree) is dict:  # its keys are str: _walk tagged any other dict
        sep = "{"
        for key, item in tree.items():
            out.append(sep + _text(key) + ":")
            _write(item, out)
            sep = ","
        out.append("}")
    elif type(tree) is list:
        # Small items go to C together, a piece's worth at a time; large ones alone.
        sep = "["
        batch: list[object] = []
        size = 0
        for item in tree:
            hint = size_hint(item, 64)
            if hint is not None and hint <= _PIECE:
                batch.append(item)
                size += hint
                if size < _PIECE:
                    continue
            if batch:
                out.append(sep + _text(batch)[1:-1])
                sep = ","
                batch, size = [], 0
            if hint is None or hint > _PIECE:
                out.append(sep)
                _write(item, out)
                sep = ","
        if batch:
            out.append(sep + _text(batch)[1:-1])
        elif sep == "[":
            out.append(sep)
        out.append("]")
    else:
        out.append(_text(tree))


def _refusal(exc: BaseException) -> SerializationError:
    """The error :class:`JsonCodec` raises for what stopped the walk of a value."""
    if isinstance(exc, _Unencodable):
        where = _format_path(exc.segments)
        return SerializationError(f"cannot encode {exc.subject} at {where}: {exc.reason}")
    if isinstance(exc, RecursionError):
        return SerializationError(
            f"cannot encode value: nested too deeply (more than {MAX_DEPTH} levels "
            "or close to the interpreter's recursion limit)"
        )
    return SerializationError(f"cannot encode value: {exc}")  # e.g. an int too long


# --------------------------------------------------------------------------- codecs


class JsonCodec:
    """The default codec: compact, valid JSON that round-trips the supported types exactly.

    Supported are the JSON types plus tuple, set, frozenset, bytes, bytearray, non-finite
    floats, datetime/date/time/timedelta, UUID, Decimal, enum members, namedtuples and
    dataclass instances of importable classes, and dicts with any hashable keys, nested
    in any way. Aware datetimes keep their UTC offset (and a ``ZoneInfo`` its zone).
    Anything else raises :class:`~aioflow.SerializationError` naming the type and where
    in the value it sits. Decoding imports the modules that class paths name.
    """

    name: str = "json"

    def encode(self, value: object) -> str:
        """Return ``value`` as JSON text; :meth:`decode` gives back an equal value."""
        if value is NO_RESULT:  # the details of most successes: once, not per atom
            return _NO_RESULT_JSON
        t = type(value)
        # Fast path: a flat dict of str keys and JSON scalars, or such a scalar.
        if t is dict:
            flat = TAG not in value  # type: ignore[operator]
            if flat:
                for k, v in value.items():  # type: ignore[attr-defined]
                    if type(k) is not str or type(v) not in _FLAT:
                        flat = False
                        break
        else:
            flat = t in _FLAT
        if flat:
            try:
                out = _dumps(value)
            except ValueError:  # NaN/inf, or an int too long to print: take the walk
                pass
            else:
                if out.isascii():
                    return out
                try:
                    out.encode("utf-8")
                except UnicodeEncodeError:
                    return _dumps_ascii(value)
                return out
        return self._encode_walk(value)

    def _encode_walk(self, value: object) -> str:
        try:
            return _text(_walk(value, 0, set()))
        except (_Unencodable, RecursionError, ValueError) as exc:
            raise _refusal(exc) from (exc if isinstance(exc, ValueError) else None)

    def encode_pieces(self, value: object) -> list[str]:
        """The text :meth:`encode` makes of ``value``, in pieces to be joined, each made
        by a short call into C (see :func:`encode_in_pieces`)."""
        out: list[str] = []
        try:
            _write(_walk(value, 0, set()), out)
        except (_Unencodable, RecursionError, ValueError) as exc:
            raise _refusal(exc) from (exc if isinstance(exc, ValueError) else None)
        return out

    def decode(self, data: str) -> object:
        """Return the value that :meth:`encode` turned into ``data``.

        Raises :class:`~aioflow.SerializationError` when ``data`` is not such text, or
        names a class that can no longer be imported or constructed.
        """
        try:
            if _QUOTED_TAG not in data:
                try:
                    obj, end = _plain_scan(data, 0)
                except StopIteration:
                    pass
                else:
                    if end == len(data):
                        return obj
                return _plain_decoder.decode(data)
            return _tagged_decoder.decode(data)
        except SerializationError:
            raise
        except Exception as exc:
            raise SerializationError(
                f"cannot decode {_preview(data)}: {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return "JsonCodec()"


class PickleCodec:
    """Stores any picklable value as base64 text of pickle protocol 5.

    Only for journals whose readers trust their writers: decoding runs pickle.
    """

    name: str = "pickle"

    def encode(self, value: object) -> str:
        """Pickle ``value``; a value pickle refuses raises SerializationError."""
        return base64.b64encode(_pickled(value)).decode("ascii")

    def encode_pieces(self, value: object) -> list[str]:
        """The text :meth:`encode` makes of ``value``, in pieces to be joined, each made
        by a short call into C (see :func:`encode_in_pieces`)."""
        return _Base64(_pickled(value)).pieces()

    def decode(self, data: str) -> object:
        """Unpickle what :meth:`encode` wrote; bad text raises SerializationError."""
        import pickle

        try:
            return pickle.loads(base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise SerializationError(f"cannot decode {_preview(data)}: {exc}") from exc
        except Exception as exc:
            raise SerializationError(
                f"cannot unpickle {_preview(data)}: {type(exc).__name__}: {exc}"
            ) from exc

    def __repr__(self) -> str:
        return "PickleCodec()"


def _pickled(value: object) -> bytes:
    import pickle  # here, not at the top: most programs never pickle

    try:
        return pickle.dumps(value, protocol=5)
    except RecursionError:
        raise SerializationError(
            f"cannot pickle a value of type {_type_name(type(value))}: nested too deeply"
        ) from None
    except Exception as exc:
        raise SerializationError(
            f"cannot pickle a value of type {_type_name(type(value))}: {exc}"
        ) from exc


def encode_in_pieces(codec: Codec, value: object) -> list[str]:
    """What ``codec.encode(value)`` returns, as pieces to be joined: for a large value,
    in a worker thread. The built-in codecs make each piece by a short call into C, so
    the thread lets the event loop's thread run between two (one call for the whole
    value would hold the GIL, and stop the loop, until it ends). The text of another
    codec is one piece."""
    if type(codec) is JsonCodec or type(codec) is PickleCodec:
        return codec.encode_pieces(value)
    return [codec.encode(value)]


def _preview(data: object) -> str:
    text = repr(data)
    return text if len(text) <= 60 else text[:57] + "..."


_JSON = JsonCodec()
_PICKLE = PickleCodec()


def get_codec(spec: Codec | str | None) -> Codec:
    """Return the codec ``spec`` names: ``None`` or ``"json"``, ``"pickle"``, or a codec.

    A codec is any object with a str ``name`` and ``encode``/``decode`` methods; it is
    returned as it is. Anything else raises ValueError.
    """
    if spec is None or spec == "json":
        return _JSON
    if spec == "pickle":
        return _PICKLE
    if (
        not isinstance(spec, str | type)
        and isinstance(getattr(spec, "name", None), str)
        and callable(getattr(spec, "encode", None))
        and callable(getattr(spec, "decode", None))
    ):
        return spec
    raise ValueError(
        f"codec must be None, 'json', 'pickle' or an object with a str name and "
        f"encode/decode methods, not {spec!r}"
    )
