"""Credential encryption at rest with Fernet, rotatable.

``TICKER_SECRET_KEYS`` holds one or more comma-separated Fernet keys. The *first* key encrypts;
*every* key decrypts (:class:`cryptography.fernet.MultiFernet`). Rotation is therefore:

1. generate a new key with :func:`generate_key` and prepend it:
   ``TICKER_SECRET_KEYS=new,old``; restart the processes;
2. re-encrypt every stored credential with :meth:`CredentialCipher.rotate`;
3. drop the old key from the setting once nothing is encrypted under it.

Keys and plaintext never appear in messages, logs or ``repr``: errors name the setting and the
position of a bad key, never its text.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ticker_tasks.errors import ConfigError, CredentialError
from ticker_tasks.settings import ENV_PREFIX, Settings

#: The environment variable holding the keys; named in every configuration error.
SECRET_KEYS_VARIABLE = ENV_PREFIX + "SECRET_KEYS"


def generate_key() -> str:
    """Return a fresh random Fernet key (url-safe base64 text) for ``TICKER_SECRET_KEYS``."""
    return Fernet.generate_key().decode("ascii")


def split_keys(value: str) -> list[str]:
    """Split a comma-separated key list, ignoring surrounding blanks and empty entries.

    Args:
        value: The raw ``TICKER_SECRET_KEYS`` text.

    Returns:
        The keys in order (first = the encrypting key).
    """
    return [part.strip() for part in value.split(",") if part.strip()]


class CredentialCipher:
    """Encrypts and decrypts credentials (API secrets, access tokens) for storage.

    Build one per process from the settings and pass it to whatever stores credentials; it
    holds no connection and is safe to share between coroutines.
    """

    __slots__ = ("_fernet", "_key_count")

    def __init__(self, keys: Sequence[str]) -> None:
        """Build the cipher from Fernet keys; the first encrypts, all decrypt.

        Args:
            keys: Fernet keys (url-safe base64 of 32 bytes), newest first.

        Raises:
            ConfigError: No key given, or one of them is not a valid Fernet key. The message
                names ``TICKER_SECRET_KEYS`` and the key's position, never the key.
        """
        if not keys:
            raise ConfigError(
                f"{SECRET_KEYS_VARIABLE}: not set; generate a key with "
                "ticker_tasks.crypto.generate_key() and set it"
            )
        fernets: list[Fernet] = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.strip().encode("ascii")))
            except (ValueError, UnicodeEncodeError):
                raise ConfigError(
                    f"{SECRET_KEYS_VARIABLE}: key {position} of {len(keys)} is not a valid "
                    "Fernet key (url-safe base64 of 32 bytes)"
                ) from None
        self._fernet = MultiFernet(fernets)
        self._key_count = len(fernets)

    @classmethod
    def from_settings(cls, settings: Settings) -> CredentialCipher:
        """Build the cipher from ``settings.secret_keys``.

        Args:
            settings: The process settings.

        Returns:
            The cipher.

        Raises:
            ConfigError: ``TICKER_SECRET_KEYS`` is missing, empty or holds an invalid key.
        """
        secret = settings.secret_keys
        keys = split_keys(secret.get_secret_value()) if secret is not None else []
        return cls(keys)

    @property
    def key_count(self) -> int:
        """How many keys can decrypt (the first of them encrypts)."""
        return self._key_count

    def encrypt(self, text: str) -> bytes:
        """Encrypt a credential under the first key.

        Args:
            text: The plaintext credential.

        Returns:
            The Fernet token (ASCII bytes), suitable for a ``bytes`` column.
        """
        return self._fernet.encrypt(text.encode("utf-8"))

    def decrypt(self, token: bytes) -> str:
        """Decrypt a credential encrypted under any of the configured keys.

        Args:
            token: A Fernet token produced by :meth:`encrypt` (with this or an older key).

        Returns:
            The plaintext credential.

        Raises:
            CredentialError: The token is malformed, tampered with, or was encrypted under a
                key that is not configured.
        """
        try:
            plain = self._fernet.decrypt(token)
        except (InvalidToken, TypeError):
            raise CredentialError(
                f"credential cannot be decrypted with the {self._key_count} configured "
                f"key(s) in {SECRET_KEYS_VARIABLE} (wrong key or corrupted ciphertext)"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:
            raise CredentialError("decrypted credential is not UTF-8 text") from None

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a token under the first (newest) key.

        Args:
            token: A Fernet token encrypted under any configured key.

        Returns:
            A new token encrypted under the first key; the plaintext is unchanged.

        Raises:
            CredentialError: The token cannot be decrypted with any configured key.
        """
        try:
            return self._fernet.rotate(token)
        except (InvalidToken, TypeError):
            raise CredentialError(
                f"credential cannot be rotated: no key in {SECRET_KEYS_VARIABLE} decrypts it"
            ) from None

    def __repr__(self) -> str:
        """Show the key count only, never the keys."""
        return f"CredentialCipher(keys={self._key_count})"
