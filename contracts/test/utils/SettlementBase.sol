// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {PoseidonT5} from "poseidon-solidity/PoseidonT5.sol";

import {MockUSDC} from "../../src/MockUSDC.sol";
import {Settlement} from "../../src/Settlement.sol";
import {ISettlement} from "../../src/interfaces/ISettlement.sol";
import {ExpectingVerifier} from "../mocks/ExpectingVerifier.sol";
import {Test} from "./Test.sol";

/// @title SettlementBase
/// @notice Shared fixture: token, Settlement over an ExpectingVerifier, a processor, EIP-712 intent signing,
///         and an independent implementation of the intent commitment (PROTOCOL.md §2) and of the batch
///         public inputs (PROTOCOL.md §5) to arm the verifier with.
abstract contract SettlementBase is Test {
    uint256 internal constant FIELD_MODULUS =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;
    uint256 internal constant SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141;
    bytes32 internal constant INTENT_TYPEHASH = keccak256(
        "Intent(address payer,address asset,uint256 sessionKeyHash,uint256 maxAmount,uint256 maxPerPayment,"
        "uint64 validAfter,uint64 validBefore,uint256 payeesRoot,address processor,bytes32 salt)"
    );
    uint64 internal constant START = 1_700_000_000;
    /// @dev Mandate slots N the test verifier reports (Settlement only range-checks it).
    uint256 internal constant BATCH_SIZE = 16;
    /// @dev Payee allowlist depth D of PROTOCOL.md §2.
    uint256 internal constant TREE_DEPTH = 8;

    MockUSDC internal usdc;
    Settlement internal settlement;
    ExpectingVerifier internal verifier;
    /// @dev The processor every fixture intent names.
    address internal processor;
    uint256 internal slotsI;
    uint256 internal slotsP;
    uint64 internal delay;
    uint64 internal window;
    /// @dev Commitments computed here from the intents as signed, by intent id (filled by _register).
    mapping(bytes32 intentId => uint256) internal commitmentOf;

    /// @dev Deploys at START on the development chain (31337) over a development-setup verifier.
    function _deploy(uint256 intentSlots, uint256 payeeSlots, uint64 withdrawalDelay, uint64 settlementWindow)
        internal
    {
        vm.warp(START);
        slotsI = intentSlots;
        slotsP = payeeSlots;
        delay = withdrawalDelay;
        window = settlementWindow;
        processor = makeAddr("processor");
        usdc = new MockUSDC();
        verifier = new ExpectingVerifier(BATCH_SIZE, intentSlots, payeeSlots, TREE_DEPTH, true);
        settlement = new Settlement(address(verifier), withdrawalDelay, settlementWindow);
    }

    /*//////////////////////////////////////////////////////////////
                                 ESCROW
    //////////////////////////////////////////////////////////////*/

    /// @dev Mints `amount` to `payer` and deposits it into the payer's escrow with the fixture processor.
    function _fund(address payer, uint256 amount) internal {
        _fundWith(payer, processor, amount);
    }

    /// @dev Mints `amount` to `payer` and deposits it into the payer's escrow with `proc`.
    function _fundWith(address payer, address proc, uint256 amount) internal {
        usdc.mint(payer, amount);
        vm.startPrank(payer);
        usdc.approve(address(settlement), amount);
        settlement.deposit(address(usdc), proc, amount);
        vm.stopPrank();
    }

    /// @dev `payer`'s escrow with the fixture processor.
    function _escrow(address payer) internal view returns (uint256) {
        return settlement.balanceOf(payer, address(usdc), processor);
    }

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    /// @dev An intent of `payer` under session key hash `keyHash`, naming the fixture processor, any payee.
    function _intent(address payer, uint256 keyHash) internal view returns (ISettlement.Intent memory intent) {
        intent = ISettlement.Intent({
            payer: payer,
            asset: address(usdc),
            sessionKeyHash: keyHash,
            maxAmount: 1_000e6,
            maxPerPayment: 10e6,
            validAfter: START - 1 days,
            validBefore: START + 30 days,
            payeesRoot: 0,
            processor: processor,
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
                intent.payeesRoot,
                intent.processor,
                intent.salt
            )
        );
        return keccak256(abi.encodePacked("\x19\x01", domain, structHash));
    }

    /// @dev PROTOCOL.md §2: Poseidon(intentId >> 8, sessionKeyHash, payeesRoot, min(maxPerPayment, 2^64 - 1)).
    ///      PoseidonT5 is pinned to circomlibjs's Poseidon(4) by SettlementTest.test_PoseidonMatchesCircomlib.
    function _commitment(bytes32 intentId, ISettlement.Intent memory intent) internal pure returns (uint256) {
        uint256 cap = intent.maxPerPayment < 2 ** 64 ? intent.maxPerPayment : 2 ** 64 - 1;
        return PoseidonT5.hash([uint256(intentId) / 2 ** 8, intent.sessionKeyHash, intent.payeesRoot, cap]);
    }

    function _sign(uint256 key, ISettlement.Intent memory intent) internal view returns (bytes memory) {
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(key, _digest(intent));
        return abi.encodePacked(r, s, v);
    }

    /// @dev Registers `intent` signed with `key` and remembers its independently computed commitment.
    function _register(uint256 key, ISettlement.Intent memory intent) internal returns (bytes32 intentId) {
        intentId = settlement.registerIntent(intent, _sign(key, intent));
        commitmentOf[intentId] = _commitment(_digest(intent), intent);
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

    /// @dev PROTOCOL.md §5, written out independently of Settlement._publicInputs: timeRef, I commitments,
    ///      I words window + nonces·2^33 + total·2^161, P words payee + amount·2^160; unused slots 0.
    function _expectedPublicInputs(ISettlement.Batch memory batch) internal view returns (uint256[] memory pub) {
        pub = new uint256[](1 + 2 * slotsI + slotsP);
        pub[0] = batch.timeRef;
        for (uint256 s; s < batch.intents.length; ++s) {
            ISettlement.IntentSettlement memory it = batch.intents[s];
            pub[1 + s] = commitmentOf[it.intentId];
            pub[1 + slotsI + s] = uint256(it.window) + uint256(it.nonces) * 2 ** 33 + uint256(it.total) * 2 ** 161;
        }
        for (uint256 k; k < batch.payouts.length; ++k) {
            pub[1 + 2 * slotsI + k] =
                uint256(uint160(batch.payouts[k].payee)) + uint256(batch.payouts[k].amount) * 2 ** 160;
        }
    }

    /// @dev Arms the verifier to accept exactly `proof` over the batch's public inputs.
    function _arm(uint256[8] memory proof, ISettlement.Batch memory batch) internal {
        if (batch.intents.length > slotsI || batch.payouts.length > slotsP) return; // cannot be proven
        verifier.expect(keccak256(abi.encodePacked(proof, _expectedPublicInputs(batch))));
    }

    /// @dev Number of set bits, one bit at a time (independent of Settlement's SWAR popcount).
    function _popcount(uint256 bits) internal pure returns (uint256 count) {
        for (; bits != 0; bits >>= 1) {
            count += bits & 1;
        }
    }
}
