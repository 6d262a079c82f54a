"""`import aioflow` stays light: optional and heavy dependencies load only when used."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "rich",  # via structlog.dev: structlog itself is imported on the first log call
    "structlog",
    "starlette",
    "uvicorn",
    "asyncpg",
    "httpx",
    "aiosqlite",  # only when a SQLite journal or job board is opened or named
    "sqlite3",
    "importlib.metadata",  # only in Registry.load_entry_points
    "pickle",  # only in the pickle codec
)

LAZY_STDLIB = (
    # Imported where used: the codec's date/UUID/Decimal handling, ETA statistics, retry
    # jitter, completion tokens, flow fingerprints and ids.
    "datetime",
    "uuid",
    "platform",
    "decimal",
    "zoneinfo",
    "statistics",
    "fractions",
    "numbers",
    "random",
    "hashlib",
    "hmac",
    "secrets",
    "sysconfig",
)


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_aioflow_leaves_heavy_optional_modules_unloaded() -> None:
    loaded = _modules_after("import aioflow")
    assert "aioflow" in loaded
    assert sorted(m for m in HEAVY if m in loaded) == []


def test_import_aioflow_leaves_lazy_stdlib_modules_unloaded() -> None:
    loaded = _modules_after("import aioflow")
    assert sorted(m for m in LAZY_STDLIB if m in loaded) == []


def test_encoding_and_decoding_other_values_does_not_load_the_lazy_stdlib_modules() -> None:
    loaded = _modules_after(
        "import enum\n"
        "from aioflow._codec import get_codec\n"
        "class Color(enum.Enum):\n"
        "    RED = 1\n"
        "codec = get_codec('json')\n"
        "tagged = [(1, 2), {3}, b'hi', {1: 'a'}, float('inf'), Color.RED]\n"
        "for value in ({'a': 1, 'b': 'x'}, tagged):\n"
        "    assert codec.decode(codec.encode(value)) == value\n"
    )
    assert sorted(m for m in LAZY_STDLIB if m in loaded) == []


def test_every_public_name_is_still_importable_and_loads_its_dependency_on_use() -> None:
    loaded = _modules_after(
        "import aioflow\n"
        "for name in aioflow.__all__: getattr(aioflow, name)\n"
        "from aioflow.journal import SqliteJournal\n"
        "from aioflow.jobs import SqliteJobBoard\n"
        "assert SqliteJournal.__module__ == 'aioflow.journal.sqlite'\n"
        "assert SqliteJobBoard.__module__ == 'aioflow.jobs.sqlite'\n"
        "import aioflow._engine as e\n"
        "e._LOG.bind(x=1)\n"
    )
    assert {"aiosqlite", "structlog"} <= loaded


def test_unknown_names_in_the_lazy_packages_raise_attribute_error() -> None:
    import aioflow.jobs
    import aioflow.journal

    for module in (aioflow.journal, aioflow.jobs):
        with pytest.raises(AttributeError, match="NoSuchThing"):
            module.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
