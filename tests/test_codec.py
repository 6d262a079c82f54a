from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import socket
import sqlite3
import typing
import uuid
import zoneinfo
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aioflow._codec import TAG, Codec, JsonCodec, PickleCodec, get_codec
from aioflow._errors import SerializationError

codec = JsonCodec()


# --------------------------------------------------------------------- module-level types


@dataclasses.dataclass
class Point:
    x: Any
    y: Any = None


@dataclasses.dataclass(frozen=True)
class Tag:
    name: str


@dataclasses.dataclass
class WithDerived:
    a: int
    doubled: int = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.doubled = self.a * 2


class Outer:
    @dataclasses.dataclass
    class Inner:
        v: Any


class Color(enum.Enum):
    RED = "red"
    PAIR = (1, 2)


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Perm(enum.Flag):
    R = 4
    W = 2
    X = 1


class Pair(NamedTuple):
    left: Any
    right: Any


class Thing:
    """Something the json codec does not know."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Thing) and other.n == self.n

    def __hash__(self) -> int:
        return hash(self.n)


def roundtrip(value: object, c: Codec = codec) -> object:
    text = c.encode(value)
    assert isinstance(text, str)
    return c.decode(text)


# --------------------------------------------------------------------- strict equality


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down (NaN equals NaN, -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, decimal.Decimal):
        return str(a) == str(b)
    if isinstance(a, datetime.datetime | datetime.date | datetime.time):
        assert isinstance(b, datetime.datetime | datetime.date | datetime.time)
        return a.isoformat() == b.isoformat() and a == b
    if isinstance(a, enum.Enum):
        return a is b
    if isinstance(a, list | tuple):
        assert isinstance(b, list | tuple)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return len(a) == len(b) and all(
            same(ka, kb) and same(va, vb)
            for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True)
        )
    if isinstance(a, set | frozenset):
        assert isinstance(b, set | frozenset)
        if len(a) != len(b):
            return False
        for x in a:
            match = [y for y in b if y == x]
            if len(match) != 1 or not same(x, match[0]):
                return False
        return True
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return all(same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a))
    return a == b


def assert_roundtrip(value: object, c: Codec = codec) -> None:
    back = roundtrip(value, c)
    assert same(value, back), (value, back)


# --------------------------------------------------------------------- hypothesis


offsets = st.timedeltas(
    min_value=datetime.timedelta(hours=-23, minutes=-59),
    max_value=datetime.timedelta(hours=23, minutes=59),
).map(datetime.timezone)
timezones = st.none() | offsets | st.just(datetime.UTC)

hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=20),
    st.dates(),
    st.datetimes(timezones=timezones),
    st.times(timezones=timezones),
    st.timedeltas(),
    st.uuids(),
    st.decimals(allow_nan=False),
    st.sampled_from(list(Color) + list(Level) + [Perm.R | Perm.X]),
    st.builds(Tag, st.text(max_size=5)),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
leaves = st.one_of(
    hashable_leaves,
    st.floats(),  # NaN and infinities too
    st.decimals(),  # NaN, sNaN and infinities too
    st.binary(max_size=20).map(bytearray),
    st.just(TAG),
)
str_keys = st.text(max_size=8) | st.just(TAG) | st.just("v")


def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.sets(hashables, max_size=4),
        st.frozensets(hashables, max_size=4),
        st.dictionaries(str_keys, inner, max_size=4),
        st.dictionaries(hashables, inner, max_size=4),
        st.builds(Point, inner, inner),
        st.builds(Outer.Inner, inner),
        st.builds(Pair, inner, inner),
    )


values = st.recursive(leaves, containers, max_leaves=25)


@settings(max_examples=400, deadline=None)
@given(values)
def test_json_roundtrip_property(value: object) -> None:
    text = codec.encode(value)
    json.loads(text)  # valid JSON: no NaN/Infinity literals
    back = codec.decode(text)
    assert same(value, back), (value, text, back)


@settings(max_examples=100, deadline=None)
@given(values)
def test_pickle_roundtrip_property(value: object) -> None:
    assert same(value, roundtrip(value, PickleCodec()))


# --------------------------------------------------------------------- examples


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**100),
        1.5,
        -0.0,
        math.inf,
        -math.inf,
        "",
        "é\u2603",
        "\ud800",
        [],
        {},
        (),
        (1,),
        set(),
        frozenset(),
        b"",
        b"\x00\xff",
        bytearray(b"ab"),
        datetime.datetime(2024, 2, 29, 13, 5, 7, 123456),
        datetime.datetime(
            2024, 2, 29, tzinfo=datetime.timezone(datetime.timedelta(hours=5, minutes=30))
        ),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC),
        datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(microseconds=1))),
        datetime.time(tzinfo=datetime.timezone(-datetime.timedelta(minutes=1, microseconds=1))),
        datetime.date(1, 1, 1),
        datetime.time(23, 59, 59, 999999),
        datetime.time(1, 2, tzinfo=datetime.timezone(-datetime.timedelta(hours=3))),
        datetime.timedelta(days=-3, seconds=5, microseconds=7),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        decimal.Decimal("-0.000"),
        decimal.Decimal("1E+3"),
        decimal.Decimal("sNaN"),
        decimal.Decimal("-Infinity"),
        {"a": [1, (2, {3: {4.5}})]},
        [[[[[[]]]]]],
    ],
    ids=repr,
)
def test_json_roundtrip_examples(value: object) -> None:
    assert_roundtrip(value)


def test_nan_roundtrip() -> None:
    back = roundtrip({"x": math.nan})
    assert isinstance(back, dict) and math.isnan(back["x"])


def test_output_is_compact_json_sqlite_can_read() -> None:
    text = codec.encode({"a": (1, 2), "b": math.inf, "c": "é"})
    assert " " not in text
    db = sqlite3.connect(":memory:")
    (valid, tag) = db.execute(
        "select json_valid(?), json_extract(?, '$.a.__aioflow__')", (text, text)
    ).fetchone()
    assert valid == 1 and tag == "tuple"


def test_lone_surrogate_stays_storable_as_utf8() -> None:
    text = codec.encode({"s": "x\udc80"})
    text.encode("utf-8")
    assert codec.decode(text) == {"s": "x\udc80"}


def test_fast_path_output_is_plain_json() -> None:
    assert codec.encode({"result": None}) == '{"result":null}'
    assert codec.encode({"a": 1, "b": "é", "c": 1.5, "d": True}) == (
        '{"a":1,"b":"é","c":1.5,"d":true}'
    )
    assert codec.encode("x") == '"x"'
    assert codec.decode("{}") == {}
    assert codec.decode(' {"a": [1, 2]} ') == {"a": [1, 2]}


def test_reserved_key_dicts_roundtrip() -> None:
    for value in [
        {TAG: "tuple", "v": [1, 2]},
        {TAG: 1},
        {"outer": {TAG: "dict", "v": []}},
        [{TAG: None}],
        {TAG: {TAG: {TAG: "x"}}},
    ]:
        assert_roundtrip(value)


def test_strings_that_look_like_tags_roundtrip() -> None:
    for value in ['"__aioflow__"', {"k": '{"__aioflow__":"tuple","v":[]}'}, [TAG, "v"]]:
        assert_roundtrip(value)


def test_non_str_keys_roundtrip() -> None:
    value = {
        1: "int",
        2.5: "float",
        None: "none",
        False: "bool",
        (1, "a"): "tuple",
        frozenset({1}): "frozenset",
        b"k": "bytes",
        Color.RED: "enum",
        Tag("t"): "dc",
        datetime.date(2020, 1, 1): "date",
        "str": {3: (4,)},
    }
    assert_roundtrip(value)
    back = roundtrip({1: "a", "1": "b"})
    assert back == {1: "a", "1": "b"}


def test_dataclass_roundtrip() -> None:
    value = Point(x=(1, 2), y=[Point(x={1: b"a"}), Tag("n")])
    back = roundtrip(value)
    assert type(back) is Point and same(value, back)
    assert_roundtrip(Outer.Inner(v={"a": Color.PAIR}))
    text = codec.encode(Point(1, 2))
    assert json.loads(text) == {TAG: "dataclass", "cls": f"{__name__}:Point", "v": {"x": 1, "y": 2}}


def test_dataclass_init_false_field_recomputed() -> None:
    back = roundtrip(WithDerived(3))
    assert isinstance(back, WithDerived) and back.doubled == 6


def test_enum_roundtrip() -> None:
    for member in [Color.RED, Color.PAIR, Level.HIGH, Perm.R | Perm.W, Perm(0)]:
        back = roundtrip(member)
        assert back is member
    assert roundtrip([Level.LOW, 1]) == [Level.LOW, 1]
    assert type(typing.cast(list[object], roundtrip([Level.LOW, 1]))[1]) is int


def test_namedtuple_roundtrip() -> None:
    back = roundtrip(Pair(1, (2, 3)))
    assert type(back) is Pair and back == Pair(1, (2, 3))


def test_zoneinfo_datetime_keeps_zone() -> None:
    try:
        zone = zoneinfo.ZoneInfo("America/New_York")
    except zoneinfo.ZoneInfoNotFoundError:
        pytest.skip("no time zone database")
    value = datetime.datetime(2021, 11, 7, 1, 30, fold=1, tzinfo=zone)
    back = roundtrip(value)
    assert isinstance(back, datetime.datetime)
    assert back.tzinfo is zone and back.fold == 1 and back == value
    assert back.utcoffset() == value.utcoffset()


def test_set_text_is_deterministic() -> None:
    assert codec.encode({"b", "a", "c"}) == codec.encode({"c", "a", "b"})


def test_local_dataclass_refused() -> None:
    @dataclasses.dataclass
    class Local:
        n: int

    with pytest.raises(SerializationError, match=r"Local.*at value\[0\].*module level"):
        codec.encode([Local(1)])


def test_local_enum_refused() -> None:
    class LocalEnum(enum.Enum):
        A = 1

    with pytest.raises(SerializationError, match="LocalEnum"):
        codec.encode(LocalEnum.A)


@pytest.mark.parametrize(
    ("value", "type_name", "path"),
    [
        (object(), "object", "value"),
        ({"result": [1, 2, 3, {"key": Thing(1)}]}, "Thing", 'value["result"][3]["key"]'),
        ([1, lambda: 0], "function", "value[1]"),
        ((1, {2: [print]}), "builtin_function_or_method", "value[1][2][0]"),
        (Point(x=1, y=[Thing(2)]), "Thing", "value.y[0]"),
        ({"s": {Thing(3)}}, "Thing", 'value["s"]{*}'),
        ({Thing(4): 1}, "Thing", "value[<key>]"),
        ({TAG: object()}, "object", f'value["{TAG}"]'),
        (Color, "EnumType", "value"),
    ],
)
def test_unencodable_names_type_and_path(value: object, type_name: str, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        codec.encode(value)
    message = str(info.value)
    assert type_name in message
    assert f" at {path}:" in message


def test_socket_refused() -> None:
    with socket.socket() as sock, pytest.raises(SerializationError, match="socket"):
        codec.encode({"conn": sock})


def test_subclasses_of_builtins_refused() -> None:
    class MyDict(dict[str, int]):
        pass

    with pytest.raises(SerializationError, match="MyDict"):
        codec.encode(MyDict(a=1))


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        codec.encode(object())


def test_circular_list_refused() -> None:
    value: list[object] = [1]
    value.append(value)
    with pytest.raises(SerializationError, match=r"list at value\[1\].*itself"):
        codec.encode(value)


def test_circular_dict_and_dataclass_refused() -> None:
    d: dict[str, object] = {}
    d["me"] = d
    with pytest.raises(SerializationError, match="itself"):
        codec.encode(d)
    p = Point(x=None)
    p.x = [p]
    with pytest.raises(SerializationError, match="itself"):
        codec.encode(p)


def test_shared_references_are_not_cycles() -> None:
    shared = [1, 2]
    assert roundtrip([shared, shared, {"a": shared}]) == [[1, 2], [1, 2], {"a": [1, 2]}]


def test_too_deep_refused_but_500_levels_fine() -> None:
    ok: list[object] = []
    for _ in range(499):
        ok = [ok]
    assert roundtrip(ok) == ok
    deep: list[object] = []
    for _ in range(600):
        deep = [deep]
    with pytest.raises(SerializationError, match="500 levels"):
        codec.encode(deep)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[1] x",
        '{"__aioflow__":"nope","v":1}',
        '{"__aioflow__":"dataclass","cls":"os:system","v":{}}',
        '{"__aioflow__":"enum","cls":"no_such_module_xyz:E","v":1}',
        '{"__aioflow__":"float","v":"1e400"}',
    ],
)
def test_bad_text_raises_serialization_error(text: str) -> None:
    with pytest.raises(SerializationError, match="cannot decode"):
        codec.decode(text)


# --------------------------------------------------------------------- pickle


def test_pickle_roundtrip_of_arbitrary_object() -> None:
    pc = PickleCodec()
    value = {"thing": Thing(5), "when": datetime.date(2020, 1, 1)}
    text = pc.encode(value)
    assert text.isascii()
    assert pc.decode(text) == value


def test_pickle_errors() -> None:
    pc = PickleCodec()
    with pytest.raises(SerializationError, match="function"):
        pc.encode(lambda: 0)
    with pytest.raises(SerializationError, match="socket"), socket.socket() as sock:
        pc.encode(sock)
    with pytest.raises(SerializationError):
        pc.decode("not base64!")
    with pytest.raises(SerializationError):
        pc.decode("aGVsbG8=")  # base64 of b"hello", not a pickle


# --------------------------------------------------------------------- get_codec


def test_get_codec() -> None:
    assert get_codec(None) is get_codec("json")
    assert isinstance(get_codec(None), JsonCodec)
    assert get_codec(None).name == "json"
    assert isinstance(get_codec("pickle"), PickleCodec)
    assert get_codec("pickle").name == "pickle"
    mine = PickleCodec()
    assert get_codec(mine) is mine

    class Custom:
        name = "custom"

        def encode(self, value: object) -> str:
            return repr(value)

        def decode(self, data: str) -> object:
            return data

    custom = Custom()
    assert get_codec(custom) is custom


@pytest.mark.parametrize("spec", ["yaml", "JSON", "", 3, object(), JsonCodec])
def test_get_codec_errors(spec: Any) -> None:
    with pytest.raises(ValueError, match=r"'json'.*'pickle'"):
        get_codec(spec)
