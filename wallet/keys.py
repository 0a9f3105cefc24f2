"""Key custody of the co-wallet: the owner's key, sealed session keys, agent API keys, redaction.

The wallet holds every secret; an agent holds only an API key (issue 10). This module keeps
each secret in one shape and makes sure none of them reaches a ``repr``, an exception message
or a log line:

- **Owner key** (``OwnerKeystore``): an Ethereum key stored as a Web3 Secret Storage (V3)
  keystore, the JSON ``eth_account.Account.encrypt`` writes and geth reads; password from
  ``AEP2_WALLET_OWNER_PASSWORD``. The file is written atomically with mode ``0600``.
- **Session keys at rest** (``Sealer``): AES-256-GCM (NIST SP 800-38D) under a key from
  ``AEP2_WALLET_KEY``, with associated data binding each sealed key to its intent and agent,
  so a row copied onto another intent does not open.
- **API keys** (``issue_api_key`` / ``verify_api_key``): ``<prefix><key_id>.<secret>``, shown
  once; the wallet stores only the key id and a SHA-256 digest.
- **Redaction** (``redact_secrets`` / ``RedactingFilter``): a last line of defence that masks
  anything shaped like a private key, a sealed blob or an API key secret in log records.

Configuration is read at the edge: ``Sealer.from_env`` and ``OwnerKeystore.load`` read the
environment only when no explicit value is passed. Messages of every error name the variable,
file or field at fault and never carry key material; errors raised while a secret is in scope
are raised ``from None``, so no chained exception can carry it either.

Errors::

    KeyCustodyError
    ├── KeyConfigError      an environment variable or argument is missing or malformed
    ├── KeystoreError       the owner keystore file cannot be used (``.path``)
    │   └── WrongPassword   the password does not open it (MAC mismatch)
    └── UnsealError         a sealed blob cannot be opened
        ├── MalformedBlob   truncated, unknown version, or not the kind of content expected
        ├── UnknownKeyId    sealed under a key this sealer does not hold (``.key_id``)
        ├── AadMismatch     sealed for other associated data: a row moved between intents
        └── BlobTampered    the GCM tag does not verify: the blob was altered

Deliberate limitations: a ``LocalAccount`` handed out by ``OwnerKeystore.account`` is
eth-account's own object, whose ``key`` reprs as hex: pass it to signing code, never log it.
``aep2.eddsa.SessionKey`` is a dataclass whose ``repr`` shows its secret in decimal: keep it
out of logs too (``RedactingFilter`` masks it, as a long digit run, if it slips through).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from eth_account import Account
from eth_account.datastructures import SignedMessage
from eth_account.signers.local import LocalAccount

from aep2.eddsa import SessionKey

__all__ = [
    "OWNER_PASSWORD_ENV",
    "WALLET_KEY_ENV",
    "PREVIOUS_KEYS_ENV",
    "KeyCustodyError",
    "KeyConfigError",
    "KeystoreError",
    "WrongPassword",
    "UnsealError",
    "MalformedBlob",
    "UnknownKeyId",
    "AadMismatch",
    "BlobTampered",
    "OwnerKeystore",
    "Sealer",
    "session_key_aad",
    "webhook_secret_aad",
    "ApiKeyRecord",
    "issue_api_key",
    "parse_api_key",
    "verify_api_key",
    "averify_api_key",
    "redact_api_key",
    "redact_secrets",
    "RedactingFilter",
]

logger = logging.getLogger(__name__)

#: The owner keystore's password, used when ``OwnerKeystore.create`` / ``load`` get none.
OWNER_PASSWORD_ENV = "AEP2_WALLET_OWNER_PASSWORD"
#: The 256-bit sealing key: 64 hex digits (``0x`` optional) or base64 of 32 bytes.
WALLET_KEY_ENV = "AEP2_WALLET_KEY"
#: Retired sealing keys, comma-separated, same encoding: they open old blobs, never seal.
PREVIOUS_KEYS_ENV = "AEP2_WALLET_PREVIOUS_KEYS"


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class KeyCustodyError(Exception):
    """Base of every error of this module. Messages never contain key material."""


class KeyConfigError(KeyCustodyError):
    """An environment variable or argument holding a secret is missing or malformed.

    The message names the variable and what is wrong (length, encoding), never its value.
    """


class KeystoreError(KeyCustodyError):
    """The owner keystore file at ``path`` is missing, unreadable or not a V3 keystore."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"owner keystore {str(path)!r}: {reason}")


class WrongPassword(KeystoreError):
    """The password does not open the keystore at ``path`` (its MAC does not match)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "wrong password (MAC mismatch)")


class UnsealError(KeyCustodyError):
    """A sealed blob cannot be opened. Subclasses say why."""


class MalformedBlob(UnsealError):
    """The blob is truncated, has an unknown version, or opens to content of the wrong kind."""


class UnknownKeyId(UnsealError):
    """The blob was sealed under key id ``key_id``, which this sealer does not hold."""

    def __init__(self, key_id: int) -> None:
        self.key_id = key_id
        super().__init__(
            f"sealed blob: sealed under key id 0x{key_id:02x}, which is neither {WALLET_KEY_ENV} "
            f"nor one of {PREVIOUS_KEYS_ENV}"
        )


class AadMismatch(UnsealError):
    """The blob was sealed for other associated data: e.g. a session key row moved to another
    intent or agent. Detected from the blob's aad fingerprint before decryption."""


class BlobTampered(UnsealError):
    """AES-GCM authentication failed: the blob (or its header) was altered after sealing."""


# ---------------------------------------------------------------------------------------------
# Owner key: a V3 keystore file
# ---------------------------------------------------------------------------------------------


def _password(password: str | None, environ: Mapping[str, str] | None) -> str:
    if password is None:
        password = (os.environ if environ is None else environ).get(OWNER_PASSWORD_ENV)
        if password is None:
            raise KeyConfigError(f"{OWNER_PASSWORD_ENV} is not set and no password was passed")
    if not password:
        raise KeyConfigError(f"{OWNER_PASSWORD_ENV}: the owner keystore password must not be empty")
    return password


def _write_private(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically: a temporary file in the same
    directory, fsynced, then ``os.replace``; a crash leaves the old file or the new one."""
    if path.exists() and not overwrite:
        raise KeystoreError(path, "already exists (pass overwrite=True to replace it)")
    directory = path.parent
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # mkstemp's mode already; state it, umask aside
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class OwnerKeystore:
    """The owner's Ethereum key, unlocked from a V3 keystore file.

    The file is the Web3 Secret Storage Definition (version 3) JSON of
    ``eth_account.Account.encrypt``: scrypt (default ``n = 2**18``) or PBKDF2-HMAC-SHA256
    key derivation, AES-128-CTR, a Keccak-256 MAC. Build one with ``create`` (a new or imported
    key) or ``load``; both take the password explicitly or from ``AEP2_WALLET_OWNER_PASSWORD``.

    The object signs (``sign_typed_data``) and hands the eth-account ``LocalAccount`` to the
    wallet service (``account``). Its ``repr``/``str`` show the file and the address only, and
    it refuses to be pickled, so it cannot be copied into a cache or a log by accident.
    """

    __slots__ = ("_account", "_path")

    def __init__(self, account: LocalAccount, path: Path) -> None:
        """Prefer ``create`` / ``load``; this wraps an already unlocked account."""
        self._account = account
        self._path = path

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        password: str | None = None,
        *,
        private_key: bytes | str | None = None,
        kdf: Literal["scrypt", "pbkdf2"] = "scrypt",
        iterations: int | None = None,
        overwrite: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> OwnerKeystore:
        """Encrypt a new key (or ``private_key``: 32 bytes or 64 hex digits) into ``path``.

        ``kdf`` is ``"scrypt"`` or ``"pbkdf2"``; ``iterations`` its work factor (scrypt ``n``, a
        power of two; eth-account's defaults when ``None``: keep them outside tests). The file is
        written with mode 0600 atomically; an existing file is refused unless ``overwrite``.
        Raises ``KeyConfigError`` for a missing password or a malformed ``private_key`` and
        ``KeystoreError`` if the file exists or cannot be written.
        """
        target = Path(path)
        secret = _password(password, environ)
        if private_key is None:
            account: LocalAccount = Account.create()
        else:
            try:
                account = Account.from_key(private_key)
            except Exception:
                raise KeyConfigError(
                    "private_key: not a valid secp256k1 private key (32 bytes or 64 hex digits)"
                ) from None
        keystore = Account.encrypt(account.key, secret, kdf=kdf, iterations=iterations)
        try:
            _write_private(target, json.dumps(keystore).encode(), overwrite=overwrite)
        except OSError as exc:
            raise KeystoreError(target, f"cannot write: {exc.strerror}") from None
        return cls(account, target)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        password: str | None = None,
        *,
        environ: Mapping[str, str] | None = None,
    ) -> OwnerKeystore:
        """Unlock the keystore at ``path``.

        Raises ``KeystoreError`` naming the file when it is missing, unreadable or not a V3
        keystore, ``WrongPassword`` when the password does not match its MAC, and
        ``KeyConfigError`` when no password is given. Logs a warning when the file is readable
        by group or others.
        """
        source = Path(path)
        secret = _password(password, environ)
        try:
            raw = source.read_bytes()
            mode = stat.S_IMODE(source.stat().st_mode)
        except FileNotFoundError:
            raise KeystoreError(source, "no such file") from None
        except OSError as exc:
            raise KeystoreError(source, f"cannot read: {exc.strerror}") from None
        if mode & 0o077:
            logger.warning("owner keystore %s has mode %04o; chmod 600 it", source, mode)
        try:
            keystore = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise KeystoreError(source, "not JSON") from None
        if not isinstance(keystore, dict) or keystore.get("version") != 3:
            raise KeystoreError(source, "not a version 3 keystore")
        crypto = keystore.get("crypto", keystore.get("Crypto"))
        if not isinstance(crypto, dict) or not {"ciphertext", "mac", "kdf"} <= crypto.keys():
            raise KeystoreError(source, "crypto section missing or incomplete")
        try:
            key = Account.decrypt(keystore, secret)
        except ValueError as exc:
            if "MAC mismatch" in str(exc):
                raise WrongPassword(source) from None
            raise KeystoreError(source, "cannot decrypt: malformed crypto parameters") from None
        except Exception:
            raise KeystoreError(source, "cannot decrypt: malformed crypto parameters") from None
        account = Account.from_key(key)
        recorded = keystore.get("address")
        if isinstance(recorded, str) and recorded.lower().removeprefix("0x") != account.address[2:].lower():
            raise KeystoreError(source, f"decrypts to {account.address}, not its recorded address")
        return cls(account, source)

    @property
    def path(self) -> Path:
        """The keystore file."""
        return self._path

    @property
    def address(self) -> str:
        """The owner's checksummed address."""
        return str(self._account.address)

    @property
    def account(self) -> LocalAccount:
        """The unlocked eth-account ``LocalAccount``, for the wallet's signing code (for example
        ``payer.wallet.create_intent``). Its ``key`` is plain: never log or serialise it."""
        return self._account

    def sign_typed_data(self, full_message: dict[str, Any]) -> SignedMessage:
        """Sign EIP-712 typed data (``{"types", "primaryType", "domain", "message"}``)."""
        return self._account.sign_typed_data(full_message=full_message)

    def __repr__(self) -> str:
        return f"OwnerKeystore(path={str(self._path)!r}, address={self.address!r})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("OwnerKeystore holds an unlocked key and cannot be pickled")


# ---------------------------------------------------------------------------------------------
# Session keys at rest: AES-256-GCM
# ---------------------------------------------------------------------------------------------

_VERSION = 0x01
_FP_LEN = 8
_NONCE_LEN = 12
_TAG_LEN = 16
_HEADER_LEN = 2 + _FP_LEN  # version, key id, aad fingerprint
_MIN_BLOB = _HEADER_LEN + _NONCE_LEN + _TAG_LEN
_SEAL_INFO = b"aep2/wallet/seal/v1"
_KEY_ID_LABEL = b"aep2/wallet/key-id/v1"
_SESSION_KEY_AAD = b"aep2/wallet/session-key/v1"
_WEBHOOK_SECRET_AAD = b"aep2/wallet/webhook-secret/v1"


def _decode_key(text: str, variable: str) -> bytes:
    """32 bytes from 64 hex digits (``0x`` optional) or base64 (standard or URL-safe
    alphabet, padding optional). The two never overlap: hex is exactly 64 characters."""
    value = text.strip()
    hex_part = value[2:] if value[:2].lower() == "0x" else value
    if len(hex_part) == 64 and re.fullmatch(r"[0-9a-fA-F]{64}", hex_part):
        return bytes.fromhex(hex_part)
    try:
        padded = value + "=" * (-len(value) % 4)
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(
            f"{variable}: neither 64 hex digits nor base64 (generate one with Sealer.generate_key())"
        ) from None
    if len(key) != 32:
        raise KeyConfigError(f"{variable}: decodes to {len(key)} bytes; AES-256 needs exactly 32")
    return key


def _key_id(key: bytes) -> int:
    return hashlib.sha256(_KEY_ID_LABEL + key).digest()[0]


def _aad_fingerprint(aad: bytes) -> bytes:
    return hashlib.sha256(aad).digest()[:_FP_LEN]


def _aad(label: bytes, parts: Iterable[tuple[str, str | int]]) -> bytes:
    """``label`` then each part as a 2-byte big-endian length and its UTF-8 text."""
    out = bytearray(label)
    for name, part in parts:
        data = str(part).encode()
        if len(data) > 0xFFFF:
            raise KeyConfigError(f"{name}: longer than 65535 bytes")
        out += len(data).to_bytes(2, "big") + data
    return bytes(out)


def session_key_aad(*, intent_id: str | int, agent_id: str | int) -> bytes:
    """The associated data binding a sealed session key to its intent and its agent.

    ``label ‖ len(intent) ‖ intent ‖ len(agent) ‖ agent`` with 2-byte big-endian lengths of
    the UTF-8 texts, so no two (intent, agent) pairs share an encoding.
    """
    return _aad(_SESSION_KEY_AAD, (("intent_id", intent_id), ("agent_id", agent_id)))


def webhook_secret_aad(endpoint_id: str) -> bytes:
    """The associated data binding a sealed webhook signing secret to its endpoint, so a
    secret copied onto another endpoint's row does not open (another label than session keys)."""
    return _aad(_WEBHOOK_SECRET_AAD, (("endpoint_id", endpoint_id),))


class Sealer:
    """Seals secrets at rest with AES-256-GCM (NIST SP 800-38D).

    Blob layout, version 1 (``open`` refuses any other version)::

        offset  0        1        2             10           22               len-16
               ┌────────┬────────┬─────────────┬────────────┬────────────────┬─────────┐
               │ 0x01   │ key id │ aad fp (8)  │ nonce (12) │ ciphertext (n) │ tag (16)│
               └────────┴────────┴─────────────┴────────────┴────────────────┴─────────┘

    - The AES key is HKDF-SHA256(the configured key, info ``aep2/wallet/seal/v1``), so the
      same configured key can later derive other subkeys without reuse.
    - The nonce is 96 random bits per message (``os.urandom``). SP 800-38D caps random nonces
      at 2**32 messages per key; one session key per intent stays far below that.
    - GCM's associated data is the 10-byte header followed by the caller's ``aad``: altering
      the version, the key id or the fingerprint fails authentication like the ciphertext.
    - The aad fingerprint (first 8 bytes of SHA-256(aad)) only makes errors precise: a blob
      opened with another aad raises ``AadMismatch`` rather than ``BlobTampered``. Security
      rests on the tag; the aad itself (an intent and an agent id) is not secret.

    **Rotation.** The key id is the first byte of SHA-256(``aep2/wallet/key-id/v1`` ‖ key), so
    it needs no bookkeeping. ``key`` seals; each of ``previous`` only opens. To rotate: put the
    old key in ``AEP2_WALLET_PREVIOUS_KEYS``, a new one in ``AEP2_WALLET_KEY``, ``reseal``
    every blob for which ``needs_reseal`` is true, then drop the old key. Two configured keys
    with the same id are refused (1 in 256 per pair): generate another.
    """

    __slots__ = ("_current", "_ciphers")

    def __init__(self, key: bytes, *, previous: Iterable[bytes] = ()) -> None:
        """``key`` and each of ``previous`` are 32 raw bytes. Raises ``KeyConfigError``."""
        keys = [key, *previous]
        self._ciphers: dict[int, AESGCM] = {}
        for index, item in enumerate(keys):
            name = WALLET_KEY_ENV if index == 0 else f"{PREVIOUS_KEYS_ENV}[{index - 1}]"
            if not isinstance(item, (bytes, bytearray)) or len(item) != 32:
                size = len(item) if isinstance(item, (bytes, bytearray)) else "non-bytes"
                raise KeyConfigError(f"{name}: {size} bytes; AES-256 needs exactly 32")
            key_id = _key_id(bytes(item))
            if key_id in self._ciphers:
                raise KeyConfigError(f"{name}: key id 0x{key_id:02x} collides with another key; generate another")
            subkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO).derive(bytes(item))
            self._ciphers[key_id] = AESGCM(subkey)
        self._current = _key_id(bytes(key))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Sealer:
        """Build from ``AEP2_WALLET_KEY`` (and ``AEP2_WALLET_PREVIOUS_KEYS`` if set).

        Each key is 64 hex digits (``0x`` optional) or the base64 of 32 bytes. Raises
        ``KeyConfigError`` naming the variable when it is missing, malformed or short.
        """
        env = os.environ if environ is None else environ
        text = env.get(WALLET_KEY_ENV)
        if not text:
            raise KeyConfigError(f"{WALLET_KEY_ENV} is not set: 32 random bytes, as 64 hex digits or base64")
        key = _decode_key(text, WALLET_KEY_ENV)
        previous = [
            _decode_key(item, PREVIOUS_KEYS_ENV)
            for item in env.get(PREVIOUS_KEYS_ENV, "").split(",")
            if item.strip()
        ]
        return cls(key, previous=previous)

    @staticmethod
    def generate_key() -> str:
        """A fresh key for ``AEP2_WALLET_KEY``: 32 bytes from the OS's CSPRNG, base64."""
        return base64.b64encode(os.urandom(32)).decode()

    @property
    def key_id(self) -> int:
        """The id (0–255) that new blobs carry."""
        return self._current

    def seal(self, plaintext: bytes, *, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad``; a version 1 blob."""
        header = bytes([_VERSION, self._current]) + _aad_fingerprint(aad)
        nonce = os.urandom(_NONCE_LEN)
        return header + nonce + self._ciphers[self._current].encrypt(nonce, bytes(plaintext), header + aad)

    def open(self, blob: bytes, *, aad: bytes) -> bytes:
        """The plaintext of ``blob`` sealed with ``aad``.

        Raises ``MalformedBlob`` (not bytes, shorter than 38 bytes, unknown version),
        ``UnknownKeyId``, ``AadMismatch`` (sealed for another aad) or ``BlobTampered``.
        """
        header = self._check_header(blob)
        if header[2:] != _aad_fingerprint(aad):
            raise AadMismatch(
                "sealed blob: sealed for different associated data (a row moved to another intent or agent?)"
            )
        nonce = bytes(blob[_HEADER_LEN : _HEADER_LEN + _NONCE_LEN])
        try:
            return self._ciphers[header[1]].decrypt(nonce, bytes(blob[_HEADER_LEN + _NONCE_LEN :]), header + aad)
        except InvalidTag:
            raise BlobTampered("sealed blob: authentication failed (altered after sealing)") from None

    def needs_reseal(self, blob: bytes) -> bool:
        """Whether ``blob`` was sealed under a key other than the current one."""
        return self._check_header(blob)[1] != self._current

    def reseal(self, blob: bytes, *, aad: bytes) -> bytes:
        """``blob``'s plaintext sealed again under the current key (for rotation)."""
        return self.seal(self.open(blob, aad=aad), aad=aad)

    def seal_session_key(self, key: SessionKey, *, aad: bytes) -> bytes:
        """Seal a BabyJubJub session key: the plaintext is its secret, 32 bytes big-endian.

        Use ``session_key_aad(intent_id=…, agent_id=…)`` as ``aad``.
        """
        return self.seal(key.secret.to_bytes(32, "big"), aad=aad)

    def open_session_key(self, blob: bytes, *, aad: bytes) -> SessionKey:
        """The ``SessionKey`` sealed in ``blob``; raises an ``UnsealError`` as ``open`` does, or
        ``MalformedBlob`` when the authentic plaintext is not a 32-byte secret in ``[1, l)``."""
        plain = self.open(blob, aad=aad)
        if len(plain) != 32:
            raise MalformedBlob(f"sealed session key: plaintext is {len(plain)} bytes, not 32")
        try:
            return SessionKey(int.from_bytes(plain, "big"))
        except ValueError:
            raise MalformedBlob("sealed session key: secret is not in [1, l)") from None

    def _check_header(self, blob: bytes) -> bytes:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise MalformedBlob(f"sealed blob: expected bytes, got {type(blob).__name__}")
        if len(blob) < _MIN_BLOB:
            raise MalformedBlob(
                f"sealed blob: {len(blob)} bytes, shorter than the {_MIN_BLOB} of header, nonce and tag"
            )
        header = bytes(blob[:_HEADER_LEN])
        if header[0] != _VERSION:
            raise MalformedBlob(f"sealed blob: unknown version 0x{header[0]:02x} (this wallet reads 0x{_VERSION:02x})")
        if header[1] not in self._ciphers:
            raise UnknownKeyId(header[1])
        return header

    def __repr__(self) -> str:
        ids = ", ".join(f"0x{k:02x}" for k in self._ciphers)
        return f"Sealer(key_id=0x{self._current:02x}, key_ids=[{ids}])"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("Sealer holds the sealing key and cannot be pickled")


# ---------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------

_PREFIX_RE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,15}_")
_KEY_ID_HEX = 16
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(32)
_API_KEY_RE = re.compile(rf"({_PREFIX_RE.pattern})([0-9a-f]{{{_KEY_ID_HEX}}})\.([A-Za-z0-9_-]+)")
_MAX_PRESENTED = 128
_API_KEY_LABEL = b"aep2/wallet/api-key/v1\x00"


def _api_key_digest(key_id: str, secret: str) -> str:
    return hashlib.sha256(_API_KEY_LABEL + key_id.encode() + b"." + secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """What the wallet stores for an agent's API key: never the secret.

    ``key_id`` is 16 hex digits, public (it appears in logs, in ``redact_api_key``'s output);
    ``digest`` is the SHA-256 (hex) of ``"aep2/wallet/api-key/v1\\0" ‖ key_id ‖ "." ‖ secret``.

    Why a plain SHA-256 and not an HMAC with a pepper: the secret is 256 bits from the OS's
    CSPRNG, so guessing it from a stolen digest is infeasible with or without a pepper, and a
    slow KDF would only slow down every request. A pepper would tie every agent's API key to
    ``AEP2_WALLET_KEY``: rotating the sealing key would lock every agent out. The label and
    the key id in the hashed input keep the digest from being reused for another key id.
    """

    key_id: str
    digest: str
    prefix: str = "aep2_"

    def matches(self, secret: str) -> bool:
        """Whether ``secret`` hashes to ``digest``, compared in constant time."""
        return hmac.compare_digest(_api_key_digest(self.key_id, secret), self.digest)


def issue_api_key(prefix: str = "aep2_") -> tuple[str, ApiKeyRecord]:
    """A new API key: ``(shown_once, record)``.

    ``shown_once`` is ``<prefix><key_id>.<secret>``: ``key_id`` 16 hex digits (64 random
    bits), ``secret`` ``secrets.token_urlsafe(32)`` (43 characters, 256 bits). Show it to the
    owner once and store only ``record``. ``prefix`` is a letter, up to 15 letters or digits
    and ``_`` (it tells a leaked key's origin to secret scanners). Raises ``KeyConfigError``.
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise KeyConfigError(f"prefix: {prefix!r} must be a letter, up to 15 letters or digits, then '_'")
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    return f"{prefix}{key_id}.{secret}", ApiKeyRecord(key_id, _api_key_digest(key_id, secret), prefix)


def parse_api_key(presented: object) -> tuple[str, str, str] | None:
    """``(prefix, key_id, secret)`` of a well-formed API key, else ``None``; never raises."""
    if not isinstance(presented, str) or len(presented) > _MAX_PRESENTED:
        return None
    match = _API_KEY_RE.fullmatch(presented.strip())
    if match is None or not _SECRET_RE.fullmatch(match.group(3)):
        return None
    return match.group(1), match.group(2), match.group(3)


# A digest to compare against when the key id is unknown, so both paths do the same work.
_DUMMY = ApiKeyRecord("0" * _KEY_ID_HEX, "0" * 64)


def _check(parsed: tuple[str, str, str], record: ApiKeyRecord | None) -> str | None:
    prefix, key_id, secret = parsed
    candidate = record if record is not None and record.key_id == key_id else _DUMMY
    ok = candidate.matches(secret)
    return key_id if ok and candidate is record and record.prefix == prefix else None


def verify_api_key(presented: object, lookup: Callable[[str], ApiKeyRecord | None]) -> str | None:
    """The key id of ``presented`` if it is a valid API key, else ``None``.

    ``lookup(key_id)`` returns the stored ``ApiKeyRecord`` or ``None``. Malformed input,
    an unknown key id, a wrong prefix or a wrong secret all return ``None`` without raising;
    the secret is compared in constant time (``hmac.compare_digest``). Exceptions of
    ``lookup`` itself (a database down) propagate: that is a 5xx, not a 401.
    """
    parsed = parse_api_key(presented)
    if parsed is None:
        return None
    return _check(parsed, lookup(parsed[1]))


async def averify_api_key(
    presented: object, lookup: Callable[[str], Awaitable[ApiKeyRecord | None]]
) -> str | None:
    """``verify_api_key`` with an async ``lookup`` (the wallet's database is async)."""
    parsed = parse_api_key(presented)
    if parsed is None:
        return None
    return _check(parsed, await lookup(parsed[1]))


def redact_api_key(presented: object) -> str:
    """``<prefix><key_id>.…`` for logs and responses; ``[redacted]`` when not well-formed."""
    if isinstance(presented, str):
        match = _API_KEY_RE.match(presented.strip())
        if match is not None:
            return f"{match.group(1)}{match.group(2)}.…"
    return "[redacted]"


# ---------------------------------------------------------------------------------------------
# Redaction of log records
# ---------------------------------------------------------------------------------------------

# An API key: keep prefix and key id, drop the secret.
_LOG_API_KEY = re.compile(rf"(?<![A-Za-z0-9])({_PREFIX_RE.pattern}[0-9a-f]{{{_KEY_ID_HEX}}})\.[A-Za-z0-9_-]+")
# 64 or more hex digits in a row (0x optional): a private key, a hex blob or keystore
# ciphertext; also a decimal session-key secret (75+ digits). Hashes of 32 bytes match too.
_LOG_HEX = re.compile(r"(?:0[xX])?(?<![0-9a-fA-F])[0-9a-fA-F]{64,}(?![0-9a-fA-F])")
# Python bytes literals of 16+ characters, as %r of a sealed blob or a raw key prints them.
_LOG_BYTES = re.compile(r"""(?<![A-Za-z0-9_])b(?:'(?:[^'\\\n]|\\.){16,}'|"(?:[^"\\\n]|\\.){16,}")""")
# 64 or more base64 / base64url characters mixing digits, upper and lower case: a base64 blob.
_LOG_B64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{64,}={0,2}")


def _b64_sub(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = any(c.isdigit() for c in text) and any(c.isupper() for c in text) and any(c.islower() for c in text)
    return "[redacted:base64]" if mixed else text


def redact_secrets(text: str) -> str:
    """``text`` with everything shaped like a secret masked.

    Masks: full API keys (to ``<prefix><key_id>.[redacted]``), runs of 64+ hex digits with
    optional ``0x`` (``[redacted:hex]``: private keys, hex blobs, and also 32-byte hashes such
    as transaction hashes, which look the same), bytes literals of 16+ characters
    (``b'[redacted]'``) and runs of 64+ base64 characters mixing digits and both cases
    (``[redacted:base64]``). It errs towards masking; an API key secret logged without its
    prefix and key id is not recognisable and is not masked.
    """
    text = _LOG_API_KEY.sub(r"\1.[redacted]", text)
    text = _LOG_BYTES.sub("b'[redacted]'", text)
    text = _LOG_HEX.sub("[redacted:hex]", text)
    return _LOG_B64.sub(_b64_sub, text)


class RedactingFilter(logging.Filter):
    """A logging filter that applies ``redact_secrets`` to each record it sees; drops none.

    It keeps a record's shape wherever it can, because formatters may read ``args`` themselves
    (uvicorn's ``AccessFormatter`` unpacks five of them): when the formatted message carries
    nothing secret the record is left as it is; otherwise ``msg`` and each string argument (or
    string value of a mapping argument) are redacted in place, and the record keeps its
    ``args``. Only when that is not enough (a secret in the ``repr`` of a bytes or other
    object argument) or the arguments do not format is the message formatted, redacted and
    stored with no args. The formatted traceback (``exc_text``) and ``stack_info`` are
    redacted too. Install it on handlers, not loggers: a logger's filters do not see records
    propagated from its children::

        for handler in logging.getLogger().handlers:
            handler.addFilter(RedactingFilter())

    Extra attributes given with ``extra=`` are not inspected.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            record.msg, record.args = f"{redact_secrets(str(record.msg))} [unformattable arguments dropped]", ()
            message = None
        if message is not None and redact_secrets(message) != message:
            record.msg = redact_secrets(record.msg) if isinstance(record.msg, str) else record.msg
            record.args = _redact_args(record.args)
            try:
                still = record.getMessage()
            except Exception:
                still = message
            if redact_secrets(still) != still:
                record.msg, record.args = redact_secrets(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_secrets(record.stack_info)
        return True


def _redact_args(args: Any) -> Any:
    """``args`` of the same shape (tuple or mapping) with every string redacted."""
    def one(value: Any) -> Any:
        return redact_secrets(value) if isinstance(value, str) else value

    if isinstance(args, Mapping):
        return {key: one(value) for key, value in args.items()}
    if isinstance(args, tuple):
        return tuple(one(value) for value in args)
    return args
