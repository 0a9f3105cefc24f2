"""Key custody (``wallet.keys``): owner keystore, sealed session keys, API keys, redaction.

Every test that holds a secret also checks that no ``repr``, ``str``, exception message or
formatted traceback contains it (``_assert_hidden``: hex, either case, and decimal).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import stat
import traceback
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from hypothesis import given, strategies as st

import wallet.keys as keys
from aep2.eddsa import SessionKey
from wallet.keys import (
    AadMismatch,
    ApiKeyRecord,
    BlobTampered,
    KeyConfigError,
    KeystoreError,
    MalformedBlob,
    OwnerKeystore,
    RedactingFilter,
    Sealer,
    UnknownKeyId,
    UnsealError,
    WrongPassword,
    averify_api_key,
    issue_api_key,
    parse_api_key,
    redact_api_key,
    redact_secrets,
    session_key_aad,
    verify_api_key,
)

FAST_KDF: dict[str, Any] = {"kdf": "scrypt", "iterations": 2**10}  # tests only: default is 2**18
PASSWORD = "correct horse battery staple"
OWNER_KEY = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


def _forms(secret: bytes | int) -> list[str]:
    raw = secret if isinstance(secret, bytes) else secret.to_bytes(32, "big")
    forms = [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode(), repr(raw)[2:-1]]
    return forms + [str(int.from_bytes(raw, "big"))]


def _assert_hidden(secret: bytes | int, *objects: object) -> None:
    """No ``repr``/``str`` of ``objects`` (nor a traceback, for exceptions) shows ``secret``."""
    for obj in objects:
        texts = [repr(obj), str(obj)]
        if isinstance(obj, BaseException):
            texts.append("".join(traceback.format_exception(obj)))
        for text in texts:
            for form in _forms(secret):
                assert form not in text, f"secret leaked in {type(obj).__name__}: {text[:200]}"


def _typed_data() -> dict[str, Any]:
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "Ping": [{"name": "n", "type": "uint256"}],
        },
        "primaryType": "Ping",
        "domain": {"name": "aep2-test", "chainId": 31337},
        "message": {"n": 7},
    }


def test_exported_members() -> None:
    assert sorted(keys.__all__) == sorted(
        [
            "OWNER_PASSWORD_ENV", "WALLET_KEY_ENV", "PREVIOUS_KEYS_ENV",
            "KeyCustodyError", "KeyConfigError", "KeystoreError", "WrongPassword",
            "UnsealError", "MalformedBlob", "UnknownKeyId", "AadMismatch", "BlobTampered",
            "OwnerKeystore", "Sealer", "session_key_aad", "webhook_secret_aad", "ApiKeyRecord", "issue_api_key",
            "parse_api_key", "verify_api_key", "averify_api_key", "redact_api_key",
            "redact_secrets", "RedactingFilter",
        ]
    )
    for name in keys.__all__:
        assert hasattr(keys, name)


# ---------------------------------------------------------------------------------------------
# Owner keystore
# ---------------------------------------------------------------------------------------------


def test_owner_keystore_round_trip_signs_eip712(tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    created = OwnerKeystore.create(path, PASSWORD, private_key=OWNER_KEY, **FAST_KDF)
    loaded = OwnerKeystore.load(path, PASSWORD)
    expected = Account.from_key(OWNER_KEY).address
    assert created.address == loaded.address == expected
    assert isinstance(loaded.account, LocalAccount)
    signed = loaded.sign_typed_data(_typed_data())
    signable = encode_typed_data(full_message=_typed_data())
    assert Account.recover_message(signable, signature=signed.signature) == expected
    assert json.loads(path.read_text())["version"] == 3
    _assert_hidden(OWNER_KEY, created, loaded)
    assert OWNER_KEY.hex() not in path.read_text()


def test_owner_keystore_create_new_key_and_env_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEP2_WALLET_OWNER_PASSWORD", PASSWORD)
    created = OwnerKeystore.create(tmp_path / "owner.json", **FAST_KDF)
    loaded = OwnerKeystore.load(tmp_path / "owner.json")
    assert loaded.address == created.address
    _assert_hidden(bytes(loaded.account.key), loaded)


def test_owner_keystore_file_mode_0600_and_no_temp_left(tmp_path: Path) -> None:
    old = os.umask(0)  # the mode must not depend on the umask
    try:
        OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "owner.json").stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["owner.json"]


def test_owner_keystore_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    first = OwnerKeystore.create(path, PASSWORD, **FAST_KDF)
    with pytest.raises(KeystoreError, match="already exists") as info:
        OwnerKeystore.create(path, PASSWORD, **FAST_KDF)
    assert str(path) in str(info.value)
    assert OwnerKeystore.load(path, PASSWORD).address == first.address
    second = OwnerKeystore.create(path, PASSWORD, private_key=OWNER_KEY, overwrite=True, **FAST_KDF)
    assert OwnerKeystore.load(path, PASSWORD).address == second.address != first.address
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_owner_keystore_wrong_password_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    OwnerKeystore.create(path, PASSWORD, private_key=OWNER_KEY, **FAST_KDF)
    with pytest.raises(WrongPassword) as info:
        OwnerKeystore.load(path, "not the password")
    assert info.value.path == path
    assert str(path) in str(info.value) and "wrong password" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__
    _assert_hidden(OWNER_KEY, info.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a version 3 keystore"),
        (b'{"version": 1}', "not a version 3 keystore"),
        (b'{"version": 3, "crypto": {"kdf": "scrypt"}}', "incomplete"),
    ],
)
def test_owner_keystore_malformed_file_names_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "owner.json"
    path.write_bytes(content)
    with pytest.raises(KeystoreError, match=reason) as info:
        OwnerKeystore.load(path, PASSWORD)
    assert not isinstance(info.value, WrongPassword)
    assert str(path) in str(info.value)


def test_owner_keystore_corrupt_crypto_parameters(tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    OwnerKeystore.create(path, PASSWORD, private_key=OWNER_KEY, **FAST_KDF)
    keystore = json.loads(path.read_text())
    keystore["crypto"]["kdfparams"]["n"] = "many"
    path.write_text(json.dumps(keystore))
    with pytest.raises(KeystoreError, match="malformed crypto parameters") as info:
        OwnerKeystore.load(path, PASSWORD)
    _assert_hidden(OWNER_KEY, info.value)


def test_owner_keystore_address_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "owner.json"
    OwnerKeystore.create(path, PASSWORD, private_key=OWNER_KEY, **FAST_KDF)
    keystore = json.loads(path.read_text())
    keystore["address"] = "00" * 20
    path.write_text(json.dumps(keystore))
    with pytest.raises(KeystoreError, match="not its recorded address"):
        OwnerKeystore.load(path, PASSWORD)


def test_owner_keystore_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="no such file") as info:
        OwnerKeystore.load(tmp_path / "absent.json", PASSWORD)
    assert "absent.json" in str(info.value)
    with pytest.raises(KeystoreError, match="cannot write"):
        OwnerKeystore.create(tmp_path / "no-dir" / "owner.json", PASSWORD, **FAST_KDF)


def test_owner_keystore_password_missing_or_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AEP2_WALLET_OWNER_PASSWORD", raising=False)
    with pytest.raises(KeyConfigError, match="AEP2_WALLET_OWNER_PASSWORD is not set"):
        OwnerKeystore.create(tmp_path / "owner.json", **FAST_KDF)
    with pytest.raises(KeyConfigError, match="AEP2_WALLET_OWNER_PASSWORD"):
        OwnerKeystore.load(tmp_path / "owner.json", environ={"AEP2_WALLET_OWNER_PASSWORD": ""})
    assert not (tmp_path / "owner.json").exists()


def test_owner_keystore_bad_private_key_is_not_echoed(tmp_path: Path) -> None:
    bad = b"\xff" * 32  # above the secp256k1 order
    with pytest.raises(KeyConfigError, match="private_key") as info:
        OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, private_key=bad, **FAST_KDF)
    _assert_hidden(bad, info.value)


def test_owner_keystore_warns_on_open_mode(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "owner.json"
    OwnerKeystore.create(path, PASSWORD, **FAST_KDF)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="wallet.keys"):
        OwnerKeystore.load(path, PASSWORD)
    assert "0644" in caplog.text and "chmod 600" in caplog.text


def test_owner_keystore_cannot_be_pickled(tmp_path: Path) -> None:
    owner = OwnerKeystore.create(tmp_path / "owner.json", PASSWORD, **FAST_KDF)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(owner)


# ---------------------------------------------------------------------------------------------
# Sealer: configuration
# ---------------------------------------------------------------------------------------------

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _same_id_key(key: bytes) -> bytes:
    """A different 32-byte key whose key id equals ``key``'s."""
    target = keys._key_id(key)
    for i in range(1, 100_000):
        candidate = i.to_bytes(32, "big")
        if candidate != key and keys._key_id(candidate) == target:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


@pytest.mark.parametrize(
    "text",
    [
        KEY.hex(),
        "0x" + KEY.hex(),
        "0X" + KEY.hex().upper(),
        base64.b64encode(KEY).decode(),
        base64.urlsafe_b64encode(KEY).decode().rstrip("="),
        f"  {KEY.hex()}\n",
    ],
)
def test_sealer_from_env_accepts_hex_and_base64(text: str) -> None:
    blob = Sealer(KEY).seal(b"x", aad=b"a")
    assert Sealer.from_env({"AEP2_WALLET_KEY": text}).open(blob, aad=b"a") == b"x"


@pytest.mark.parametrize(
    ("environ", "match"),
    [
        ({}, "AEP2_WALLET_KEY is not set"),
        ({"AEP2_WALLET_KEY": ""}, "AEP2_WALLET_KEY is not set"),
        ({"AEP2_WALLET_KEY": KEY[:16].hex()}, "AEP2_WALLET_KEY: decodes to 24 bytes"),
        ({"AEP2_WALLET_KEY": base64.b64encode(KEY[:16]).decode()}, "AEP2_WALLET_KEY: decodes to 16 bytes"),
        ({"AEP2_WALLET_KEY": "not a key!"}, "AEP2_WALLET_KEY: neither 64 hex digits nor base64"),
        ({"AEP2_WALLET_KEY": KEY.hex(), "AEP2_WALLET_PREVIOUS_KEYS": "short"}, "AEP2_WALLET_PREVIOUS_KEYS"),
    ],
)
def test_sealer_from_env_refuses_missing_or_short_key(environ: dict[str, str], match: str) -> None:
    with pytest.raises(KeyConfigError, match=match) as info:
        Sealer.from_env(environ)
    _assert_hidden(KEY, info.value)
    assert KEY[:16].hex() not in str(info.value)


def test_sealer_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEP2_WALLET_KEY", Sealer.generate_key())
    sealer = Sealer.from_env()
    assert sealer.open(sealer.seal(b"x", aad=b""), aad=b"") == b"x"


def test_sealer_refuses_raw_key_of_wrong_size_and_colliding_ids() -> None:
    with pytest.raises(KeyConfigError, match="AEP2_WALLET_KEY: 31 bytes"):
        Sealer(KEY[:31])
    with pytest.raises(KeyConfigError, match=r"AEP2_WALLET_PREVIOUS_KEYS\[0\]: key id 0x.. collides"):
        Sealer(KEY, previous=[_same_id_key(KEY)])


def test_generate_key_is_32_random_bytes() -> None:
    first, second = Sealer.generate_key(), Sealer.generate_key()
    assert len(base64.b64decode(first)) == 32 and first != second


def test_sealer_repr_hides_key_and_refuses_pickle() -> None:
    sealer = Sealer(KEY, previous=[OTHER_KEY])
    assert repr(sealer).startswith("Sealer(key_id=0x")
    _assert_hidden(KEY, sealer)
    _assert_hidden(OTHER_KEY, sealer)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(sealer)


# ---------------------------------------------------------------------------------------------
# Sealer: sealing and opening
# ---------------------------------------------------------------------------------------------


def test_session_key_round_trip() -> None:
    sealer = Sealer(KEY)
    key = SessionKey.generate()
    aad = session_key_aad(intent_id="intent-1", agent_id="agent-7")
    blob = sealer.seal_session_key(key, aad=aad)
    assert blob[0] == 0x01 and blob[1] == sealer.key_id
    assert len(blob) == 2 + 8 + 12 + 32 + 16
    assert sealer.open_session_key(blob, aad=aad) == key
    assert key.secret.to_bytes(32, "big") not in blob


@given(plaintext=st.binary(max_size=256), aad=st.binary(max_size=64))
def test_seal_open_round_trip(plaintext: bytes, aad: bytes) -> None:
    sealer = Sealer(KEY)
    assert sealer.open(sealer.seal(plaintext, aad=aad), aad=aad) == plaintext


def test_nonces_are_unique_across_many_seals() -> None:
    sealer = Sealer(KEY)
    blobs = [sealer.seal(b"same plaintext", aad=b"same aad") for _ in range(5_000)]
    assert len({blob[10:22] for blob in blobs}) == len(blobs)
    assert len(set(blobs)) == len(blobs)


@given(st.lists(st.binary(max_size=8), min_size=2, max_size=50))
def test_nonces_unique_per_sealer(plaintexts: list[bytes]) -> None:
    sealer = Sealer(OTHER_KEY)
    nonces = [sealer.seal(p, aad=b"")[10:22] for p in plaintexts]
    assert len(set(nonces)) == len(nonces)


def test_wrong_aad_raises_aad_mismatch() -> None:
    sealer = Sealer(KEY)
    key = SessionKey.generate()
    blob = sealer.seal_session_key(key, aad=session_key_aad(intent_id=1, agent_id="a"))
    with pytest.raises(AadMismatch, match="different associated data") as info:
        sealer.open_session_key(blob, aad=session_key_aad(intent_id=2, agent_id="a"))
    _assert_hidden(key.secret, info.value)
    with pytest.raises(AadMismatch):
        sealer.open_session_key(blob, aad=session_key_aad(intent_id=1, agent_id="b"))


def test_swapped_rows_do_not_open() -> None:
    sealer = Sealer(KEY)
    def row(intent: str, agent: str) -> tuple[str, bytes]:
        aad = session_key_aad(intent_id=intent, agent_id=agent)
        return agent, sealer.seal_session_key(SessionKey.generate(), aad=aad)

    rows = {"i1": row("i1", "agent-a"), "i2": row("i2", "agent-b")}
    swapped = {"i1": (rows["i1"][0], rows["i2"][1]), "i2": (rows["i2"][0], rows["i1"][1])}
    for intent, (agent, blob) in swapped.items():
        with pytest.raises(AadMismatch):
            sealer.open_session_key(blob, aad=session_key_aad(intent_id=intent, agent_id=agent))


def test_aad_encoding_is_unambiguous() -> None:
    assert session_key_aad(intent_id="ab", agent_id="c") != session_key_aad(intent_id="a", agent_id="bc")
    assert session_key_aad(intent_id=1, agent_id=2) == session_key_aad(intent_id="1", agent_id="2")
    with pytest.raises(KeyConfigError, match="intent_id"):
        session_key_aad(intent_id="x" * 70_000, agent_id="a")


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (0, MalformedBlob),  # version
        (1, UnknownKeyId),  # key id
        (2, AadMismatch),  # aad fingerprint
        (9, AadMismatch),
        (10, BlobTampered),  # nonce
        (21, BlobTampered),
        (22, BlobTampered),  # ciphertext
        (-16, BlobTampered),  # tag
        (-1, BlobTampered),
    ],
)
def test_tampered_blob_raises_precise_error(offset: int, error: type[UnsealError]) -> None:
    sealer = Sealer(KEY)
    key = SessionKey.generate()
    blob = bytearray(sealer.seal_session_key(key, aad=b"row"))
    blob[offset] ^= 0x01
    with pytest.raises(error) as info:
        sealer.open_session_key(bytes(blob), aad=b"row")
    _assert_hidden(key.secret, info.value)


@given(data=st.data())
def test_any_bit_flip_is_refused(data: st.DataObject) -> None:
    sealer = Sealer(KEY)
    blob = bytearray(sealer.seal(data.draw(st.binary(max_size=64)), aad=b"row"))
    index = data.draw(st.integers(0, len(blob) - 1))
    blob[index] ^= 1 << data.draw(st.integers(0, 7))
    with pytest.raises(UnsealError):
        sealer.open(bytes(blob), aad=b"row")


def test_header_is_authenticated_even_under_a_same_id_key() -> None:
    # A key with the same id opens the header checks; only the GCM tag can refuse it.
    blob = Sealer(KEY).seal(b"secret", aad=b"row")
    with pytest.raises(BlobTampered, match="authentication failed"):
        Sealer(_same_id_key(KEY)).open(blob, aad=b"row")


@pytest.mark.parametrize("length", [0, 1, 10, 22, 37])
def test_truncated_blob_is_malformed(length: int) -> None:
    sealer = Sealer(KEY)
    blob = sealer.seal(b"", aad=b"row")
    assert len(blob) == 38
    with pytest.raises(MalformedBlob, match=f"{length} bytes, shorter than the 38"):
        sealer.open(blob[:length], aad=b"row")


def test_truncated_ciphertext_fails_authentication() -> None:
    sealer = Sealer(KEY)
    blob = sealer.seal_session_key(SessionKey.generate(), aad=b"row")
    with pytest.raises(BlobTampered):
        sealer.open_session_key(blob[:-1], aad=b"row")


def test_blob_must_be_bytes() -> None:
    with pytest.raises(MalformedBlob, match="expected bytes, got str"):
        Sealer(KEY).open("01ab", aad=b"")  # type: ignore[arg-type]


def test_open_session_key_refuses_content_of_other_kind() -> None:
    sealer = Sealer(KEY)
    with pytest.raises(MalformedBlob, match="plaintext is 5 bytes, not 32"):
        sealer.open_session_key(sealer.seal(b"hello", aad=b"row"), aad=b"row")
    with pytest.raises(MalformedBlob, match=r"not in \[1, l\)"):
        sealer.open_session_key(sealer.seal(bytes(32), aad=b"row"), aad=b"row")


def test_rotation_opens_old_blobs_and_reseals_under_the_new_key() -> None:
    old, new = Sealer(KEY), Sealer(OTHER_KEY, previous=[KEY])
    assert old.key_id != new.key_id
    key = SessionKey.generate()
    blob = old.seal_session_key(key, aad=b"row")
    assert new.needs_reseal(blob)
    assert new.open_session_key(blob, aad=b"row") == key
    resealed = new.reseal(blob, aad=b"row")
    assert not new.needs_reseal(resealed) and resealed[1] == new.key_id
    retired = Sealer(OTHER_KEY)
    assert retired.open_session_key(resealed, aad=b"row") == key
    with pytest.raises(UnknownKeyId, match="AEP2_WALLET_PREVIOUS_KEYS") as info:
        retired.open_session_key(blob, aad=b"row")
    assert info.value.key_id == old.key_id


# ---------------------------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------------------------


def _store(*records: ApiKeyRecord) -> dict[str, ApiKeyRecord]:
    return {record.key_id: record for record in records}


def test_api_key_issue_and_verify() -> None:
    shown, record = issue_api_key()
    prefix, rest = shown[:5], shown[5:]
    key_id, secret = rest.split(".")
    assert prefix == "aep2_" and key_id == record.key_id and len(key_id) == 16 and len(secret) == 43
    assert secret not in repr(record) and secret not in record.digest
    store = _store(record)
    assert verify_api_key(shown, store.get) == record.key_id
    assert parse_api_key(shown) == ("aep2_", key_id, secret)


def test_api_keys_are_unique() -> None:
    issued = [issue_api_key() for _ in range(200)]
    assert len({shown for shown, _ in issued}) == len({r.key_id for _, r in issued}) == 200


async def test_api_key_async_lookup() -> None:
    shown, record = issue_api_key()

    async def lookup(key_id: str) -> ApiKeyRecord | None:
        return _store(record).get(key_id)

    assert await averify_api_key(shown, lookup) == record.key_id
    assert await averify_api_key(shown[:-1] + ("A" if shown[-1] != "A" else "B"), lookup) is None
    assert await averify_api_key("garbage", lookup) is None


def test_api_key_custom_prefix() -> None:
    shown, record = issue_api_key(prefix="acme_")
    assert shown.startswith("acme_") and record.prefix == "acme_"
    assert verify_api_key(shown, _store(record).get) == record.key_id
    # The same key id and secret presented under another prefix is not that key.
    assert verify_api_key("aep2_" + shown[5:], _store(record).get) is None
    for bad in ["", "aep2", "1x_", "a-b_", "averyveryverylongprefix_"]:
        with pytest.raises(KeyConfigError, match="prefix"):
            issue_api_key(prefix=bad)


def test_api_key_wrong_secret_unknown_id_and_wrong_record() -> None:
    shown, record = issue_api_key()
    other_shown, other = issue_api_key()
    store = _store(record, other)
    key_id = record.key_id
    tampered = shown[:-1] + ("A" if shown[-1] != "A" else "B")
    assert verify_api_key(tampered, store.get) is None
    assert verify_api_key(f"aep2_{key_id}.{other_shown.split('.')[1]}", store.get) is None
    assert verify_api_key(shown, _store(other).get) is None
    assert verify_api_key(shown, lambda _id: other) is None  # a lookup returning the wrong row


@pytest.mark.parametrize(
    "presented",
    [
        None, 123, b"aep2_0123456789abcdef.x", "", "aep2_", "aep2_0123456789abcdef",
        "aep2_0123456789abcdef.", "aep2_0123456789ABCDEF." + "a" * 43, "aep2_0123.abc",
        "aep2_0123456789abcdef." + "a" * 42, "aep2_0123456789abcdef." + "a" * 44,
        "aep2_0123456789abcdef." + "a" * 42 + "é", "aep2_0123456789abcdef." + "a" * 10_000,
        "Bearer aep2_0123456789abcdef." + "a" * 43, "aep2_0123456789abcdef." + "a" * 42 + "\x00",
    ],
)
def test_api_key_malformed_returns_none(presented: object) -> None:
    def lookup(key_id: str) -> ApiKeyRecord | None:
        raise AssertionError("malformed keys never reach the store")

    assert verify_api_key(presented, lookup) is None


@given(st.text(max_size=120))
def test_api_key_verify_never_raises(presented: str) -> None:
    _, record = issue_api_key()
    assert verify_api_key(presented, _store(record).get) is None


def test_api_key_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    shown, record = issue_api_key()
    calls: list[tuple[str, str]] = []
    real = keys.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    assert verify_api_key(shown, _store(record).get) == record.key_id
    assert verify_api_key(shown, {}.get) is None  # an unknown id still does one comparison
    assert len(calls) == 2


def test_redact_api_key() -> None:
    shown, record = issue_api_key()
    assert redact_api_key(shown) == f"aep2_{record.key_id}.…"
    assert shown.split(".")[1] not in redact_api_key(shown)
    assert redact_api_key("whatever-secret") == "[redacted]"
    assert redact_api_key(None) == "[redacted]"


# ---------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------


def test_redact_secrets_masks_every_secret_shape() -> None:
    private = OWNER_KEY.hex()
    shown, record = issue_api_key()
    session = SessionKey.generate()
    blob = Sealer(KEY).seal_session_key(session, aad=b"row")
    cases = [
        private, "0x" + private, "0X" + private.upper(), f"key={private};", f"pk0x{private}",
        shown, f"Authorization: Bearer {shown}", blob.hex(), repr(blob), str(blob),
        base64.b64encode(blob).decode(), base64.urlsafe_b64encode(blob).decode(),
        repr(session), json.dumps({"sealed": blob.hex()}),
    ]
    for text in cases:
        clean = redact_secrets(text)
        hidden = [private, private.upper(), shown.split(".")[1], blob.hex(), str(session.secret), session.to_hex()[2:]]
        for secret in hidden:
            assert secret not in clean, (text, clean)
    assert redact_secrets(f"agent {shown} paid") == f"agent aep2_{record.key_id}.[redacted] paid"


def test_redact_secrets_keeps_ordinary_text() -> None:
    address = Account.from_key(OWNER_KEY).address
    text = f"payer {address} paid 1000 base units to /v1/forecast/london at 2024-01-01T00:00:00Z (intent 42)"
    assert redact_secrets(text) == text
    assert redact_secrets("b'short'") == "b'short'"


def test_logging_filter_removes_secrets_from_captured_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RedactingFilter())
    log = logging.getLogger("wallet.test_keys")
    shown, _ = issue_api_key()
    secret_part = shown.split(".")[1]
    private = "0x" + OWNER_KEY.hex()
    blob = Sealer(KEY).seal_session_key(SessionKey.generate(), aad=b"row")
    with caplog.at_level(logging.INFO, logger="wallet.test_keys"):
        log.info("loaded owner key %s for agent key %s", private, shown)
        log.info("sealed row %r", blob)
        log.info("preformatted: " + shown + " 100% done")
        log.info("bad args %s %s", private)  # unformattable: dropped, not echoed raw
        try:
            raise ValueError(f"could not use {private}")
        except ValueError:
            log.exception("failure with key %s", shown)
        log.info("stack", stack_info=True)
    text = caplog.text
    assert "loaded owner key [redacted:hex]" in text and "100% done" in text
    for secret in [OWNER_KEY.hex(), secret_part, blob.hex(), repr(blob)[2:-1]]:
        assert secret not in text
        for record in caplog.records:
            assert secret not in record.getMessage()
            assert secret not in (record.exc_text or "")
    assert "Traceback" in text and "ValueError: could not use [redacted:hex]" in text


_SECRET_PIECES = [
    "aep2_0123456789abcdef." + "S" * 43,  # an API key
    "0x" + OWNER_KEY.hex(),
    OWNER_KEY.hex(),
]
_ORDINARY_PIECES = ["/v1/intents", "GET", "?city=paris", "127.0.0.1:5000", "1.1"]


@given(
    path=st.lists(st.sampled_from(_SECRET_PIECES + _ORDINARY_PIECES), min_size=1, max_size=4).map("/".join),
    client=st.sampled_from(_SECRET_PIECES + _ORDINARY_PIECES),
    status=st.sampled_from([200, 401, 404, 500]),
)
def test_redacting_filter_keeps_uvicorn_access_args_and_masks_them(path: str, client: str, status: int) -> None:
    """uvicorn's ``AccessFormatter`` unpacks exactly five args: the one filter must keep them."""
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               (client, "GET", path, "1.1", status), None)
    assert RedactingFilter().filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 5
    line = AccessFormatter('%(client_addr)s "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert f'"GET {redact_secrets(path)} HTTP/1.1" {status}' in line
    for secret in ("S" * 43, OWNER_KEY.hex()):
        assert secret not in line


def test_redacting_filter_leaves_clean_records_alone_and_falls_back_for_object_args() -> None:
    clean = logging.LogRecord("x", logging.INFO, __file__, 1, "paid %d to %s", (5, "0xabc"), None)
    RedactingFilter().filter(clean)
    assert (clean.msg, clean.args) == ("paid %d to %s", (5, "0xabc"))
    named = logging.LogRecord("x", logging.INFO, __file__, 1, "key %(k)s n %(n)d", ({"k": _SECRET_PIECES[0], "n": 1},), None)
    RedactingFilter().filter(named)
    assert named.getMessage() == "key aep2_0123456789abcdef.[redacted] n 1" and isinstance(named.args, dict)
    blob = logging.LogRecord("x", logging.INFO, __file__, 1, "sealed %r", (b"\x01" * 40,), None)
    RedactingFilter().filter(blob)  # bytes: only formatting the message can mask them
    assert (blob.getMessage(), blob.args) == ("sealed b'[redacted]'", ())
