"""``ExactEvmFacilitator`` in-process on a real Anvil with the real MockUSDC: a payment verifies,
settles once and pays exactly its amount; every refusal carries its x402 code and moves
nothing; settle is idempotent, also across facilitator restarts and concurrent calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from facilitator_fixtures import (
    FACILITATOR_KEY,
    NETWORK,
    PRICE,
    authorization,
    balance,
    deploy_wallet,
    domain,
    payment,
    requirements,
    send,
    sign,
    sign_digest,
    token_contract,
)
from web3 import Web3

from aep2.deployment import Deployment
from aep2.eip3009 import cancel_authorization_typed_data, transfer_with_authorization_digest
from aep2.errors import ErrorCode
from aep2.x402.models import ExactEvmAuthorization, PaymentPayload, PaymentRequirements, PaymentRequirementsV1
from facilitator import ExactEvmFacilitator
from settlement.devchain import free_port

pytestmark = pytest.mark.chain

SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def signed_payment(
    payer: LocalAccount, token: str, payee: str, **auth: Any
) -> tuple[PaymentPayload, PaymentRequirements]:
    """A v2 payment of ``PRICE`` to ``payee`` signed by ``payer``, and its requirements."""
    required = requirements(token, payee)
    return payment(required, sign(payer, domain(token), authorization(payer.address, payee, **auth))), required


async def assert_refused(
    facilitator: ExactEvmFacilitator,
    w3: Web3,
    token: str,
    paid: PaymentPayload,
    required: PaymentRequirements | PaymentRequirementsV1,
    code: str,
) -> None:
    """``verify`` and ``settle`` both refuse with ``code`` and a message; no balance moves."""
    sender = paid.payload.get("authorization", {}).get("from")
    watched = [a for a in (sender, required.pay_to) if isinstance(a, str) and Web3.is_address(a)]
    before = [balance(w3, token, Web3.to_checksum_address(a)) for a in watched]
    verdict = await facilitator.verify(paid, required)
    assert (verdict.is_valid, verdict.invalid_reason) == (False, code), verdict
    assert verdict.invalid_message
    settled = await facilitator.settle(paid, required)
    assert (settled.success, settled.error_reason, settled.transaction) == (False, code, ""), settled
    assert settled.error_message and settled.network == required.network
    assert [balance(w3, token, Web3.to_checksum_address(a)) for a in watched] == before


# ---------------------------------------------------------------------------- success


async def test_verify_then_settle_pays_exactly_the_amount(facilitator, deployment: Deployment, w3, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee)
    payer_before = balance(w3, deployment.token, payer.address)

    verdict = await facilitator.verify(paid, required)
    assert verdict.is_valid and verdict.payer == payer.address and verdict.invalid_reason is None
    assert balance(w3, deployment.token, payee) == 0  # verify moves nothing

    settled = await facilitator.settle(paid, required)
    assert settled.success, settled
    assert (settled.payer, settled.network, settled.amount) == (payer.address, NETWORK, str(PRICE))
    receipt = w3.eth.get_transaction_receipt(settled.transaction)
    assert receipt["status"] == 1 and receipt["to"] == deployment.token
    assert w3.eth.get_transaction(settled.transaction)["from"] == Account.from_key(FACILITATOR_KEY).address
    assert balance(w3, deployment.token, payee) == PRICE
    assert payer_before - balance(w3, deployment.token, payer.address) == PRICE


async def test_signature_with_v_0_or_1_settles(facilitator, deployment, w3, payer, payee):
    """Some signers emit ``v`` as 0/1 rather than 27/28; the token needs 27/28."""
    paid, required = signed_payment(payer, deployment.token, payee)
    signature = bytes.fromhex(paid.payload["signature"][2:])
    paid = _with_signature(paid, signature[:64] + bytes([signature[64] - 27]))
    assert (await facilitator.verify(paid, required)).is_valid
    assert (await facilitator.settle(paid, required)).success
    assert balance(w3, deployment.token, payee) == PRICE


async def test_domain_defaults_to_the_tokens_when_extra_omits_it(facilitator, deployment, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee)
    required = required.model_copy(update={"extra": {}})
    assert (await facilitator.verify(paid, required)).is_valid


async def test_supported_names_this_chain_and_the_sender(facilitator):
    supported = (await facilitator.supported()).to_wire()
    assert supported == {
        "kinds": [
            {"x402Version": 2, "scheme": "exact", "network": NETWORK},
            {"x402Version": 1, "scheme": "exact", "network": NETWORK},  # 31337 has no v1 name
        ],
        "extensions": [],
        "signers": {"eip155:*": [Account.from_key(FACILITATOR_KEY).address]},
    }


async def test_struct_hash_digest_equals_the_shared_typed_data_digest(facilitator, deployment, payer, payee):
    """The facilitator hashes the authorization struct itself; it must be the digest of
    ``aep2.eip3009``'s typed data, which wallets sign."""
    paid, required = signed_payment(payer, deployment.token, payee, valid_after=7, value=PRICE)
    parsed = await facilitator._parse(paid, required)
    authorization = ExactEvmAuthorization.model_validate(paid.payload["authorization"])
    expected = transfer_with_authorization_digest(domain(deployment.token), authorization)
    assert facilitator._digest(parsed, domain(deployment.token), cache=True) == expected
    assert facilitator._digest(parsed, domain(deployment.token), cache=True) == expected  # cached separator


async def test_too_low_cached_gas_limit_falls_back_to_an_estimate(facilitator, deployment, w3, new_account, payee):
    """Settle simulates within the token's cached gas limit; when that fails, an estimate
    decides, so a stale limit costs one more call, never a payment."""
    first, required = signed_payment(new_account(PRICE, eth=False), deployment.token, payee)
    assert (await facilitator.settle(first, required)).success
    assert facilitator._gas_limits[deployment.token] > 30_000
    facilitator._gas_limits[deployment.token] = 30_000  # below what transferWithAuthorization needs
    second, required = signed_payment(new_account(PRICE, eth=False), deployment.token, Account.create().address)
    settled = await facilitator.settle(second, required)
    assert settled.success, settled
    assert w3.eth.get_transaction_receipt(settled.transaction)["status"] == 1
    assert facilitator._gas_limits[deployment.token] > 30_000


# ---------------------------------------------------------------------------- idempotency


async def test_settled_authorization_is_refused_by_verify_and_settles_to_the_same_transaction(
    facilitator, deployment, w3, payer, payee
):
    paid, required = signed_payment(payer, deployment.token, payee)
    first = await facilitator.settle(paid, required)
    assert first.success

    verdict = await facilitator.verify(paid, required)
    assert (verdict.is_valid, verdict.invalid_reason) == (False, ErrorCode.AUTHORIZATION_USED)
    again = await facilitator.settle(paid, required)
    assert again.success and again.transaction == first.transaction, again

    # A restarted facilitator has no memory of it: the chain tells it.
    restarted = ExactEvmFacilitator(deployment.rpc_url, FACILITATOR_KEY)
    try:
        after_restart = await restarted.settle(paid, required)
    finally:
        await restarted.aclose()
    assert after_restart.success and after_restart.transaction == first.transaction
    assert balance(w3, deployment.token, payee) == PRICE  # paid once


async def test_concurrent_settles_of_one_authorization_send_one_transaction(facilitator, deployment, w3, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee)
    block_before = w3.eth.block_number
    results = await asyncio.gather(*(facilitator.settle(paid, required) for _ in range(4)))
    assert all(r.success for r in results) and len({r.transaction for r in results}) == 1
    assert balance(w3, deployment.token, payee) == PRICE
    sender = Account.from_key(FACILITATOR_KEY).address
    sent = [
        tx
        for number in range(block_before + 1, w3.eth.block_number + 1)
        for tx in w3.eth.get_block(number, full_transactions=True)["transactions"]
        if tx["from"] == sender
    ]
    assert len(sent) == 1


async def test_concurrent_settles_of_many_payments_get_distinct_nonces(
    facilitator, deployment, w3, new_account: Callable[..., LocalAccount], payee
):
    payments = [signed_payment(new_account(PRICE, eth=False), deployment.token, payee) for _ in range(6)]
    results = await asyncio.gather(*(facilitator.settle(p, r) for p, r in payments))
    assert all(r.success for r in results), results
    assert len({r.transaction for r in results}) == len(payments)
    assert balance(w3, deployment.token, payee) == PRICE * len(payments)


# ---------------------------------------------------------------------------- refusals


async def test_cancelled_authorization(facilitator, deployment, w3, payer, payee, new_account):
    nonce = bytes(range(32))
    paid, required = signed_payment(payer, deployment.token, payee, nonce=nonce)
    typed = cancel_authorization_typed_data(domain(deployment.token), payer.address, nonce)
    cancel = payer.sign_message(encode_typed_data(full_message=typed)).signature
    relayer = new_account()
    token = token_contract(w3, deployment.token)
    send(w3, relayer.key, token.functions.cancelAuthorization(payer.address, nonce, bytes(cancel)))
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.AUTHORIZATION_USED)


async def test_insufficient_balance(facilitator, deployment, w3, new_account, payee):
    poor = new_account(PRICE - 1, eth=False)
    paid, required = signed_payment(poor, deployment.token, payee)
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.INSUFFICIENT_FUNDS)


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"name": "USDC", "version": "2"}, ErrorCode.TOKEN_NAME_MISMATCH),
        ({"name": "USD Coin", "version": "1"}, ErrorCode.TOKEN_VERSION_MISMATCH),
    ],
)
async def test_wrong_domain_in_extra(facilitator, deployment, w3, payer, payee, extra, code):
    required = requirements(deployment.token, payee, extra=extra)
    token_domain = domain(deployment.token, name=extra["name"], version=extra["version"])
    paid = payment(required, sign(payer, token_domain, authorization(payer.address, payee)))
    await assert_refused(facilitator, w3, deployment.token, paid, required, code)


async def test_requirements_on_another_network(facilitator, deployment, w3, payer, payee):
    required = requirements(deployment.token, payee, network="eip155:8453")
    paid = payment(required, sign(payer, domain(deployment.token), authorization(payer.address, payee)))
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.NETWORK_MISMATCH)


async def test_payment_accepted_another_network(facilitator, deployment, w3, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee)
    paid = paid.model_copy(update={"accepted": required.model_copy(update={"network": "eip155:1"})})
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.NETWORK_MISMATCH)


async def test_value_mismatch(facilitator, deployment, w3, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee, value=PRICE - 1)
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.EXACT_VALUE_MISMATCH)


async def test_recipient_mismatch(facilitator, deployment, w3, payer, payee):
    elsewhere = Account.create().address
    required = requirements(deployment.token, payee)
    paid = payment(required, sign(payer, domain(deployment.token), authorization(payer.address, elsewhere)))
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.EXACT_RECIPIENT_MISMATCH)


@pytest.mark.parametrize("seconds_left", [-10, 0, 3])
async def test_expired_or_expiring_valid_before(facilitator, deployment, w3, payer, payee, seconds_left):
    paid, required = signed_payment(payer, deployment.token, payee, valid_before=int(time.time()) + seconds_left)
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.EXACT_VALID_BEFORE)


async def test_not_yet_valid(facilitator, deployment, w3, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee, valid_after=int(time.time()) + 60)
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.EXACT_VALID_AFTER)


def _with_signature(paid: PaymentPayload, signature: bytes) -> PaymentPayload:
    return paid.model_copy(update={"payload": paid.payload | {"signature": "0x" + signature.hex()}})


async def test_signature_of_another_key(facilitator, deployment, w3, payer, payee):
    required = requirements(deployment.token, payee)
    forged = sign(Account.create(), domain(deployment.token), authorization(payer.address, payee))
    await assert_refused(
        facilitator, w3, deployment.token, payment(required, forged), required, ErrorCode.INVALID_EXACT_SIGNATURE
    )


@pytest.mark.parametrize("tamper", ["flipped_bit", "high_s", "short"])
async def test_tampered_signature(facilitator, deployment, w3, payer, payee, tamper):
    paid, required = signed_payment(payer, deployment.token, payee)
    signature = bytes.fromhex(paid.payload["signature"][2:])
    if tamper == "flipped_bit":
        signature = signature[:10] + bytes([signature[10] ^ 1]) + signature[11:]
    elif tamper == "high_s":  # the malleable twin: same signer off-chain, refused by the token
        s = SECP256K1_ORDER - int.from_bytes(signature[32:64], "big")
        signature = signature[:32] + s.to_bytes(32, "big") + bytes([55 - signature[64]])
    else:
        signature = signature[:64]
    await assert_refused(
        facilitator, w3, deployment.token, _with_signature(paid, signature), required, ErrorCode.INVALID_EXACT_SIGNATURE
    )


async def test_transfer_that_would_revert_fails_simulation(facilitator, deployment, w3, payer):
    # ERC-20 refuses transfers to the zero address: every off-chain check passes, the call does not.
    zero = "0x" + "00" * 20
    paid, required = signed_payment(payer, deployment.token, zero)
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.EXACT_SIMULATION_FAILED)


async def test_other_scheme(facilitator, deployment, w3, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee)
    upto = required.model_copy(update={"scheme": "upto"})
    paid = paid.model_copy(update={"accepted": upto})
    await assert_refused(facilitator, w3, deployment.token, paid, upto, ErrorCode.UNSUPPORTED_SCHEME)


async def test_v2_payment_against_v1_requirements(facilitator, deployment, w3, payer, payee):
    paid, _ = signed_payment(payer, deployment.token, payee)
    v1 = PaymentRequirementsV1(
        scheme="exact",
        network=NETWORK,
        max_amount_required=str(PRICE),
        resource="http://example.test/r",
        pay_to=payee,
        max_timeout_seconds=60,
        asset=deployment.token,
    )
    await assert_refused(facilitator, w3, deployment.token, paid, v1, ErrorCode.UNSUPPORTED_VERSION)


@pytest.mark.parametrize(
    "payload",
    [
        {"signature": "0x12"},
        {"signature": "0x" + "11" * 65, "authorization": {"from": "0x1234", "to": "0x", "value": "1"}},
        {"permit2Authorization": {}, "signature": "0x" + "11" * 65},
    ],
)
async def test_malformed_payload(facilitator, deployment, w3, payee, payload):
    required = requirements(deployment.token, payee)
    paid = payment(required, payload)
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.INVALID_PAYLOAD)


async def test_unreachable_node_is_an_unexpected_error_not_an_exception(deployment, payer, payee):
    paid, required = signed_payment(payer, deployment.token, payee)
    offline = ExactEvmFacilitator(f"http://127.0.0.1:{free_port()}", FACILITATOR_KEY, rpc_timeout=2)
    try:
        verdict = await offline.verify(paid, required)
        settled = await offline.settle(paid, required)
    finally:
        await offline.aclose()
    assert (verdict.is_valid, verdict.invalid_reason) == (False, ErrorCode.UNEXPECTED_VERIFY_ERROR)
    assert verdict.payer == payer.address
    assert (settled.success, settled.error_reason) == (False, ErrorCode.UNEXPECTED_SETTLE_ERROR)


# ---------------------------------------------------------------------------- ERC-1271


async def test_erc1271_wallet_pays(facilitator, deployment, w3, new_account, payee):
    owner, deployer = Account.create(), new_account()
    wallet = deploy_wallet(w3, deployer.key, owner.address)
    send(w3, deployer.key, token_contract(w3, deployment.token).functions.mint(wallet, PRICE))
    required = requirements(deployment.token, payee)
    paid = payment(required, sign_digest(owner, domain(deployment.token), authorization(wallet, payee)))

    verdict = await facilitator.verify(paid, required)
    assert verdict.is_valid and verdict.payer == wallet, verdict
    settled = await facilitator.settle(paid, required)
    assert settled.success and settled.payer == wallet, settled
    assert balance(w3, deployment.token, payee) == PRICE and balance(w3, deployment.token, wallet) == 0


async def test_erc1271_wallet_refuses_a_stranger(facilitator, deployment, w3, new_account, payee):
    owner, deployer = Account.create(), new_account()
    wallet = deploy_wallet(w3, deployer.key, owner.address)
    send(w3, deployer.key, token_contract(w3, deployment.token).functions.mint(wallet, PRICE))
    required = requirements(deployment.token, payee)
    paid = payment(required, sign_digest(Account.create(), domain(deployment.token), authorization(wallet, payee)))
    await assert_refused(facilitator, w3, deployment.token, paid, required, ErrorCode.INVALID_EXACT_SIGNATURE)
