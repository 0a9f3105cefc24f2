// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../../src/MockUSDC.sol";
import {Settlement} from "../../src/Settlement.sol";
import {ISettlement} from "../../src/interfaces/ISettlement.sol";
import {ExpectingVerifier} from "../mocks/ExpectingVerifier.sol";
import {Test} from "./Test.sol";

/// @title SettlementBase
/// @notice Shared fixture: token, Settlement over an ExpectingVerifier, EIP-712 intent signing, and an
///         independent implementation of PROTOCOL.md §5 to arm the verifier with.
abstract contract SettlementBase is Test {
    uint256 internal constant FIELD_MODULUS =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    bytes32 internal constant INTENT_TYPEHASH = keccak256(
        "Intent(address payer,address asset,uint256 sessionKeyHash,uint256 maxAmount,uint256 maxPerPayment,"
        "uint64 validAfter,uint64 validBefore,address[] payees,address processor,bytes32 salt)"
    );
    uint64 internal constant START = 1_700_000_000;

    MockUSDC internal usdc;
    Settlement internal settlement;
    ExpectingVerifier internal verifier;
    uint256 internal slotsI;
    uint256 internal slotsP;
    uint64 internal delay;

    function _deploy(uint256 intentSlots, uint256 payeeSlots, uint64 withdrawalDelay) internal {
        vm.warp(START);
        slotsI = intentSlots;
        slotsP = payeeSlots;
        delay = withdrawalDelay;
        usdc = new MockUSDC();
        verifier = new ExpectingVerifier(1 + 2 * intentSlots + payeeSlots);
        settlement = new Settlement(address(verifier), intentSlots, payeeSlots, withdrawalDelay);
    }

    /*//////////////////////////////////////////////////////////////
                                 ESCROW
    //////////////////////////////////////////////////////////////*/

    function _fund(address payer, uint256 amount) internal {
        usdc.mint(payer, amount);
        vm.startPrank(payer);
        usdc.approve(address(settlement), amount);
        settlement.deposit(address(usdc), amount);
        vm.stopPrank();
    }

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    function _intent(address payer, uint256 keyHash) internal view returns (ISettlement.Intent memory intent) {
        intent = ISettlement.Intent({
            payer: payer,
            asset: address(usdc),
            sessionKeyHash: keyHash,
            maxAmount: 1_000e6,
            maxPerPayment: 10e6,
            validAfter: START - 1 days,
            validBefore: START + 30 days,
            payees: new address[](0),
            processor: address(0),
            salt: keccak256(abi.encode(keyHash))
        });
    }

    /// @dev Independent EIP-712 digest (PROTOCOL.md §2).
    function _digest(ISettlement.Intent memory intent) internal view returns (bytes32) {
        bytes32 domain = keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("AEP2 Settlement"),
                keccak256("1"),
                block.chainid,
                address(settlement)
            )
        );
        bytes32 structHash = keccak256(
            abi.encode(
                INTENT_TYPEHASH,
                intent.payer,
                intent.asset,
                intent.sessionKeyHash,
                intent.maxAmount,
                intent.maxPerPayment,
                intent.validAfter,
                intent.validBefore,
                keccak256(abi.encodePacked(intent.payees)),
                intent.processor,
                intent.salt
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    function _sign(uint256 key, ISettlement.Intent memory intent) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, _digest(intent));
        return abi.encodePacked(r, s, v);
    }

    function _register(uint256 key, ISettlement.Intent memory intent) internal returns (bytes32) {
        return settlement.registerIntent(intent, _sign(key, intent));
    }

    /*//////////////////////////////////////////////////////////////
                                 BATCHES
    //////////////////////////////////////////////////////////////*/

    function _proof(uint256 seed) internal pure returns (uint256[8] memory proof) {
        for (uint256 i; i < 8; ++i) {
            proof[i] = uint256(keccak256(abi.encode(seed, i))) % FIELD_MODULUS;
        }
    }

    function _batch(uint256 intents, uint256 payouts) internal view returns (ISettlement.Batch memory batch) {
        batch.asset = address(usdc);
        batch.timeRef = uint64(block.timestamp);
        batch.intents = new ISettlement.IntentSettlement[](intents);
        batch.payouts = new ISettlement.Payout[](payouts);
    }

    /// @dev PROTOCOL.md §5, written out independently of Settlement._publicInputs.
    function _expectedPublicInputs(ISettlement.Batch memory batch) internal view returns (uint256[] memory pub) {
        pub = new uint256[](1 + 2 * slotsI + slotsP);
        pub[0] = batch.timeRef;
        for (uint256 s; s < batch.intents.length; ++s) {
            ISettlement.IntentSettlement memory it = batch.intents[s];
            ISettlement.IntentRecord memory rec = settlement.getIntent(it.intentId);
            uint256 cap = rec.maxPerPayment < type(uint64).max ? rec.maxPerPayment : type(uint64).max;
            pub[1 + s] = rec.sessionKeyHash;
            pub[1 + slotsI + s] = uint256(rec.nextNonce) + uint256(it.lastNonce) * 2 ** 40 + uint256(it.count) * 2 ** 80
                + uint256(it.total) * 2 ** 96 + cap * 2 ** 184;
        }
        for (uint256 k; k < batch.payouts.length; ++k) {
            pub[1 + 2 * slotsI + k] = uint256(uint160(batch.payouts[k].payee)) + uint256(batch.payouts[k].amount) * 2 ** 160;
        }
    }

    /// @dev Arms the verifier to accept exactly `proof` over the batch's public inputs as of now.
    function _arm(uint256[8] memory proof, ISettlement.Batch memory batch) internal {
        if (batch.intents.length > slotsI || batch.payouts.length > slotsP) return; // cannot be proven
        verifier.expect(keccak256(abi.encodePacked(proof, _expectedPublicInputs(batch))));
    }
}
