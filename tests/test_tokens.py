"""Completion tokens: what a signer issues it verifies; anything else it refuses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import aioflow
from aioflow._tokens import Claim, Signer, secret_from

names = st.text(min_size=1, max_size=40)


@given(names, names, st.integers(min_value=1, max_value=10**6), st.text(max_size=20))
def test_a_token_verifies_to_what_it_was_issued_for(
    flow_id: str, atom: str, attempt: int, nonce: str
) -> None:
    signer = Signer(b"k")
    token = signer.issue(flow_id, atom, attempt, nonce)
    assert signer.verify(token) == Claim(flow_id, atom, attempt, nonce)


@given(st.data())
def test_any_changed_character_makes_a_token_invalid(data: st.DataObject) -> None:
    signer = Signer(b"k")
    token = signer.issue("flow", "atom", 1, "n")
    i = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    replacement = data.draw(st.sampled_from("AbZ0-_.x"))
    changed = token[:i] + replacement + token[i + 1 :]
    if changed == token:
        return
    try:
        claim = signer.verify(changed)
    except aioflow.InvalidTokenError:
        return
    # base64 padding bits can absorb a change in the last character without changing
    # the bytes; then the claim must still be exactly the issued one.
    assert claim == Claim("flow", "atom", 1, "n")


def test_a_token_of_another_secret_is_refused() -> None:
    token = Signer(b"one").issue("f", "a", 1, "n")
    with pytest.raises(aioflow.InvalidTokenError, match="another secret"):
        Signer(b"two").verify(token)


@pytest.mark.parametrize("bad", ["", "v1", "v1..", "v1.!!.!!", "v9.a.b", "a.b.c.d"])
def test_malformed_tokens_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(aioflow.InvalidTokenError) as info:
        Signer(b"k").verify(bad)
    assert not bad or bad not in str(info.value)


def test_a_non_string_token_is_refused() -> None:
    with pytest.raises(aioflow.InvalidTokenError):
        Signer(b"k").verify(123)  # type: ignore[arg-type]


def test_the_signer_never_shows_its_key() -> None:
    assert "secret-key" not in repr(Signer(b"secret-key"))


def test_the_secret_comes_from_the_argument_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIOFLOW_SECRET", "env")
    assert secret_from("given") == b"given"
    assert secret_from(b"raw") == b"raw"
    assert secret_from(None) == b"env"
    monkeypatch.delenv("AIOFLOW_SECRET")
    assert secret_from(None) is None
    with pytest.raises(ValueError, match="empty"):
        secret_from("")
