"""Credential encryption: round trip, rotation, configuration errors that never echo keys."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet

from ticker_tasks.crypto import CredentialCipher, generate_key, split_keys
from ticker_tasks.errors import ConfigError, CredentialError, PermanentError
from ticker_tasks.settings import load_settings


def _cipher(*keys: str) -> CredentialCipher:
    return CredentialCipher.from_settings(load_settings(secret_keys=",".join(keys)))


def test_round_trip_returns_the_plaintext_and_hides_it_in_the_token():
    cipher = _cipher(generate_key())
    token = cipher.encrypt("api-secret-ünïcode")
    assert isinstance(token, bytes)
    assert b"api-secret" not in token
    assert cipher.decrypt(token) == "api-secret-ünïcode"


def test_each_encryption_is_fresh():
    cipher = _cipher(generate_key())
    assert cipher.encrypt("same") != cipher.encrypt("same")


def test_old_tokens_decrypt_after_a_new_key_is_prepended_and_rotate_moves_them():
    old_key, new_key = generate_key(), generate_key()
    old_token = _cipher(old_key).encrypt("access-token-1")

    rotated_cipher = _cipher(new_key, old_key)
    assert rotated_cipher.key_count == 2
    assert rotated_cipher.decrypt(old_token) == "access-token-1"

    new_token = rotated_cipher.rotate(old_token)
    # Under the new key alone, only the rotated token is readable.
    assert Fernet(new_key.encode()).decrypt(new_token) == b"access-token-1"
    assert _cipher(new_key).decrypt(new_token) == "access-token-1"
    with pytest.raises(CredentialError):
        _cipher(new_key).decrypt(old_token)


def test_new_encryptions_use_the_first_key():
    first, second = generate_key(), generate_key()
    token = _cipher(first, second).encrypt("x")
    assert _cipher(first).decrypt(token) == "x"
    with pytest.raises(CredentialError):
        _cipher(second).decrypt(token)


def test_wrong_key_raises_a_permanent_credential_error_without_plaintext():
    token = _cipher(generate_key()).encrypt("hunter2")
    with pytest.raises(CredentialError) as caught:
        _cipher(generate_key()).decrypt(token)
    assert isinstance(caught.value, PermanentError)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("token", [b"", b"not-a-token", b"gAAAAA" + b"A" * 80])
def test_garbage_tokens_raise_credential_error(token):
    cipher = _cipher(generate_key())
    with pytest.raises(CredentialError):
        cipher.decrypt(token)
    with pytest.raises(CredentialError):
        cipher.rotate(token)


def test_tampered_token_is_rejected():
    cipher = _cipher(generate_key())
    token = bytearray(cipher.encrypt("secret"))
    token[-5] = ord("A") if token[-5] != ord("A") else ord("B")
    with pytest.raises(CredentialError):
        cipher.decrypt(bytes(token))


@pytest.mark.parametrize("value", [None, "", " , "])
def test_missing_keys_raise_one_config_error_line(value):
    with pytest.raises(ConfigError) as caught:
        CredentialCipher.from_settings(load_settings(secret_keys=value))
    message = str(caught.value)
    assert message.startswith("TICKER_SECRET_KEYS: ")
    assert "\n" not in message


def test_invalid_key_is_named_by_position_never_by_text():
    good = generate_key()
    bad = "definitely-not-a-fernet-key-SENSITIVE"
    with pytest.raises(ConfigError) as caught:
        _cipher(good, bad)
    message = str(caught.value)
    assert message.startswith("TICKER_SECRET_KEYS: key 2 of 2")
    assert "\n" not in message
    assert bad not in message
    assert "SENSITIVE" not in message
    assert good not in message
    assert caught.value.__cause__ is None


def test_repr_shows_no_key_material():
    key = generate_key()
    cipher = _cipher(key, generate_key())
    assert repr(cipher) == "CredentialCipher(keys=2)"
    assert key not in repr(cipher)
    assert key[:10] not in str(cipher)


def test_split_keys_ignores_blanks_and_keeps_order():
    assert split_keys(" a , ,b,") == ["a", "b"]


def test_generate_key_is_a_valid_distinct_fernet_key():
    first, second = generate_key(), generate_key()
    assert first != second
    assert Fernet(first.encode()).decrypt(Fernet(first.encode()).encrypt(b"ok")) == b"ok"
