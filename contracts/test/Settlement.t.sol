// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {ExpectingVerifier} from "./mocks/ExpectingVerifier.sol";
import {SettlementBase} from "./utils/SettlementBase.sol";

contract SettlementTest is SettlementBase {
    event Deposited(address indexed payer, address indexed token, address from, uint256 amount);
    event WithdrawalExecuted(address indexed payer, address indexed token, uint256 amount);
    event IntentRegistered(
        bytes32 indexed intentId, address indexed payer, address indexed asset, uint256 sessionKeyHash
    );
    event IntentSettled(
        bytes32 indexed intentId, address indexed payer, uint40 startNonce, uint40 lastNonce, uint16 count, uint96 total
    );
    event PayoutSent(address indexed payee, address indexed asset, uint96 amount);
    event BatchSettled(
        address indexed processor, address indexed asset, uint64 timeRef, uint256 mandates, uint256 total
    );

    uint256 private constant KEY_A = 1001;
    uint256 private constant KEY_B = 2002;

    address private alice;
    uint256 private aliceKey;
    address private bob;
    uint256 private bobKey;
    address private processor;
    address private carol;
    address private dave;

    bytes32 private idA; // alice's intent
    bytes32 private idB; // bob's intent

    function setUp() public {
        _deploy(4, 3, 1 days);
        (alice, aliceKey) = makeAddrAndKey("alice");
        (bob, bobKey) = makeAddrAndKey("bob");
        processor = makeAddr("processor");
        carol = makeAddr("carol");
        dave = makeAddr("dave");

        _fund(alice, 500e6);
        _fund(bob, 500e6);
        vm.prank(alice);
        settlement.setProcessor(processor, true);
        vm.prank(bob);
        settlement.setProcessor(processor, true);
        idA = _register(aliceKey, _intent(alice, KEY_A));
        idB = _register(bobKey, _intent(bob, KEY_B));
    }

    /*//////////////////////////////////////////////////////////////
                                HELPERS
    //////////////////////////////////////////////////////////////*/

    function _single(bytes32 id, uint40 lastNonce, uint16 count, uint96 total)
        private
        view
        returns (ISettlement.Batch memory batch)
    {
        batch = _batch(1, 1);
        batch.intents[0] = ISettlement.IntentSettlement(id, lastNonce, count, total);
        batch.payouts[0] = ISettlement.Payout(carol, total);
    }

    /// @dev alice's and bob's intents (ascending by id) paying carol and dave.
    function _pair(uint96 totalA, uint96 totalB, uint96 toCarol) private view returns (ISettlement.Batch memory batch) {
        batch = _batch(2, 2);
        ISettlement.IntentSettlement memory a = ISettlement.IntentSettlement(idA, 2, 3, totalA);
        ISettlement.IntentSettlement memory b = ISettlement.IntentSettlement(idB, 0, 1, totalB);
        (batch.intents[0], batch.intents[1]) = idA < idB ? (a, b) : (b, a);
        batch.payouts[0] = ISettlement.Payout(carol, toCarol);
        batch.payouts[1] = ISettlement.Payout(dave, totalA + totalB - toCarol);
    }

    function _settle(uint256[8] memory proof, ISettlement.Batch memory batch) private {
        vm.prank(processor);
        settlement.settleBatch(proof, batch);
    }

    function _armAndExpectRevert(ISettlement.Batch memory batch, bytes4 selector) private {
        uint256[8] memory proof = _proof(7);
        _arm(proof, batch);
        vm.expectRevert(selector);
        _settle(proof, batch);
    }

    /*//////////////////////////////////////////////////////////////
                             CONFIGURATION
    //////////////////////////////////////////////////////////////*/

    function test_Constructor() public view {
        assertEq(settlement.verifier(), address(verifier), "verifier");
        assertEq(settlement.intentSlots(), 4, "I");
        assertEq(settlement.payeeSlots(), 3, "P");
        assertEq(settlement.withdrawalDelay(), 1 days, "delay");
        bytes4 expected = bytes4(keccak256("verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[12])"));
        assertEq(bytes32(settlement.verifierSelector()), bytes32(expected), "selector spells K = 12");
    }

    function test_RevertIf_ConstructorInvalidConfig() public {
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(address(verifier), 0, 3, 1);
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(address(verifier), 4, 0, 1);
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(address(verifier), 257, 3, 1);
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(makeAddr("eoa"), 4, 3, 1);
    }

    /*//////////////////////////////////////////////////////////////
                                 ESCROW
    //////////////////////////////////////////////////////////////*/

    function test_Deposit() public {
        usdc.mint(carol, 20e6);
        vm.startPrank(carol);
        usdc.approve(address(settlement), 20e6);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit Deposited(carol, address(usdc), carol, 20e6);
        settlement.deposit(address(usdc), 20e6);
        vm.stopPrank();
        assertEq(settlement.balanceOf(carol, address(usdc)), 20e6, "escrow");
        assertEq(usdc.balanceOf(address(settlement)), 1_020e6, "custody");
    }

    function test_DepositFor() public {
        usdc.mint(dave, 20e6);
        vm.startPrank(dave);
        usdc.approve(address(settlement), 20e6);
        settlement.depositFor(carol, address(usdc), 20e6);
        vm.stopPrank();
        assertEq(settlement.balanceOf(carol, address(usdc)), 20e6, "credited to carol");
        assertEq(settlement.balanceOf(dave, address(usdc)), 0, "not to dave");
    }

    function test_DepositWithPermit() public {
        uint256 deadline = block.timestamp + 1 hours;
        usdc.mint(alice, 30e6);
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                alice,
                address(settlement),
                30e6,
                usdc.nonces(alice),
                deadline
            )
        );
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash)));
        vm.prank(alice);
        settlement.depositWithPermit(address(usdc), 30e6, deadline, v, r, s);
        assertEq(settlement.balanceOf(alice, address(usdc)), 530e6, "escrow");
    }

    function test_RevertIf_DepositZero() public {
        vm.expectRevert(ISettlement.Settlement__ZeroAmount.selector);
        settlement.deposit(address(usdc), 0);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        settlement.depositFor(address(0), address(usdc), 1);
    }

    function test_WithdrawalFlow() public {
        vm.startPrank(alice);
        settlement.requestWithdrawal(address(usdc), 200e6);
        ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(alice, address(usdc));
        assertEq(w.amount, 200e6, "requested");
        assertEq(w.readyAt, START + 1 days, "readyAt");
        assertEq(settlement.balanceOf(alice, address(usdc)), 500e6, "still escrowed until executed");

        vm.warp(START + 1 days);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit WithdrawalExecuted(alice, address(usdc), 200e6);
        assertEq(settlement.executeWithdrawal(address(usdc)), 200e6, "paid");
        vm.stopPrank();
        assertEq(usdc.balanceOf(alice), 200e6, "received");
        assertEq(settlement.balanceOf(alice, address(usdc)), 300e6, "escrow left");
        assertEq(settlement.pendingWithdrawal(alice, address(usdc)).amount, 0, "request cleared");
    }

    function test_RevertIf_WithdrawalExceedsBalance() public {
        vm.expectRevert(ISettlement.Settlement__InsufficientBalance.selector);
        vm.prank(alice);
        settlement.requestWithdrawal(address(usdc), 500e6 + 1);
    }

    function test_RevertIf_WithdrawalNotReady() public {
        vm.startPrank(alice);
        settlement.requestWithdrawal(address(usdc), 1e6);
        vm.warp(START + 1 days - 1);
        vm.expectRevert(ISettlement.Settlement__WithdrawalNotReady.selector);
        settlement.executeWithdrawal(address(usdc));
        vm.stopPrank();
    }

    function test_CancelWithdrawal() public {
        vm.startPrank(alice);
        settlement.requestWithdrawal(address(usdc), 1e6);
        settlement.cancelWithdrawal(address(usdc));
        vm.warp(START + 2 days);
        vm.expectRevert(ISettlement.Settlement__NoWithdrawalPending.selector);
        settlement.executeWithdrawal(address(usdc));
        vm.expectRevert(ISettlement.Settlement__NoWithdrawalPending.selector);
        settlement.cancelWithdrawal(address(usdc));
        vm.stopPrank();
    }

    function test_RevertIf_WithdrawalRacedAgainstSettlement() public {
        // alice tries to pull everything while a batch against her intent is in flight.
        vm.prank(alice);
        settlement.requestWithdrawal(address(usdc), 500e6);

        ISettlement.Batch memory batch = _single(idA, 0, 1, 120e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        _settle(proof, batch); // funds under a pending withdrawal remain debitable

        vm.expectRevert(ISettlement.Settlement__WithdrawalNotReady.selector);
        vm.prank(alice);
        settlement.executeWithdrawal(address(usdc));

        vm.warp(START + 1 days);
        vm.prank(alice);
        assertEq(settlement.executeWithdrawal(address(usdc)), 380e6, "only the remainder is paid");
        assertEq(usdc.balanceOf(alice), 380e6, "alice received remainder");
        assertEq(usdc.balanceOf(carol), 120e6, "carol was paid first");
        assertEq(settlement.balanceOf(alice, address(usdc)), 0, "escrow drained");
    }

    function testFuzz_DepositAndWithdraw(uint256 amount, uint256 requested, uint256 wait) public {
        amount = bound(amount, 1, 1e30);
        requested = bound(requested, 1, amount);
        wait = bound(wait, 1 days, 365 days);
        _fund(carol, amount);
        vm.startPrank(carol);
        settlement.requestWithdrawal(address(usdc), requested);
        vm.warp(START + wait);
        settlement.executeWithdrawal(address(usdc));
        vm.stopPrank();
        assertEq(usdc.balanceOf(carol), requested, "withdrawn");
        assertEq(settlement.balanceOf(carol, address(usdc)), amount - requested, "left");
    }

    /*//////////////////////////////////////////////////////////////
                               PROCESSORS
    //////////////////////////////////////////////////////////////*/

    function test_SetProcessor() public {
        assertTrue(settlement.isProcessor(alice, processor), "granted in setUp");
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        assertFalse(settlement.isProcessor(alice, processor), "revoked");
        assertTrue(settlement.isProcessor(bob, processor), "per payer");
    }

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    function test_RegisterIntent() public {
        ISettlement.Intent memory intent = _intent(alice, 3003);
        intent.payees = new address[](2);
        (intent.payees[0], intent.payees[1]) = carol < dave ? (carol, dave) : (dave, carol);
        intent.processor = processor;
        bytes memory sig = _sign(aliceKey, intent);
        bytes32 expectedId = _digest(intent);

        vm.expectEmit(true, true, true, true, address(settlement));
        emit IntentRegistered(expectedId, alice, address(usdc), 3003);
        vm.prank(makeAddr("relayer"));
        bytes32 id = settlement.registerIntent(intent, sig);

        assertEq(id, expectedId, "id is the EIP-712 digest");
        assertEq(settlement.intentDigest(intent), expectedId, "intentDigest view");
        assertEq(settlement.intentOfSessionKey(3003), id, "session key bound");
        ISettlement.IntentRecord memory rec = settlement.getIntent(id);
        assertEq(rec.payer, alice, "payer");
        assertEq(rec.asset, address(usdc), "asset");
        assertEq(rec.sessionKeyHash, 3003, "key");
        assertEq(rec.maxAmount, 1_000e6, "maxAmount");
        assertEq(rec.maxPerPayment, 10e6, "maxPerPayment");
        assertEq(rec.validAfter, START - 1 days, "validAfter");
        assertEq(rec.validBefore, START + 30 days, "validBefore");
        assertEq(rec.payeesHash, keccak256(abi.encodePacked(intent.payees)), "payeesHash");
        assertEq(rec.processor, processor, "processor");
        assertEq(rec.spent, 0, "spent");
        assertEq(rec.nextNonce, 0, "nextNonce");
        assertFalse(rec.revoked, "revoked");
    }

    function test_RegisterIntentSaturatesCaps() public {
        ISettlement.Intent memory intent = _intent(alice, 3004);
        intent.maxAmount = type(uint256).max;
        intent.maxPerPayment = type(uint256).max;
        ISettlement.IntentRecord memory rec = settlement.getIntent(_register(aliceKey, intent));
        assertEq(rec.maxAmount, type(uint96).max, "maxAmount saturated");
        assertEq(rec.maxPerPayment, type(uint64).max, "cap = min(maxPerPayment, 2^64 - 1)");
    }

    function test_IntentDigestFollowsChainId() public {
        ISettlement.Intent memory intent = _intent(alice, 3005);
        bytes32 before = settlement.intentDigest(intent);
        vm.chainId(8453);
        bytes32 afterFork = settlement.intentDigest(intent);
        assertTrue(before != afterFork, "domain separator recomputed");
        assertEq(afterFork, _digest(intent), "matches the independent digest");
    }

    function test_RevertIf_IntentWrongSigner() public {
        ISettlement.Intent memory intent = _intent(alice, 3006);
        bytes memory sig = _sign(bobKey, intent);
        vm.expectRevert(ISettlement.Settlement__InvalidSignature.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_IntentTamperedAfterSigning() public {
        ISettlement.Intent memory intent = _intent(alice, 3007);
        bytes memory sig = _sign(aliceKey, intent);
        intent.maxAmount += 1;
        vm.expectRevert(ISettlement.Settlement__InvalidSignature.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_IntentSignatureHighS() public {
        ISettlement.Intent memory intent = _intent(alice, 3008);
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(aliceKey, _digest(intent));
        // (r, n - s, v ^ 1) recovers the same signer under raw ecrecover: the malleable twin.
        bytes32 highS = bytes32(SECP256K1_N - uint256(s));
        uint8 flipped = v == 27 ? 28 : 27;
        assertEq(ecrecover(_digest(intent), flipped, r, highS), alice, "twin is valid for ecrecover");
        vm.expectRevert(ISettlement.Settlement__InvalidSignature.selector);
        settlement.registerIntent(intent, abi.encodePacked(r, highS, flipped));
    }

    function test_RevertIf_IntentSignatureMalformed() public {
        vm.expectRevert(ISettlement.Settlement__InvalidSignature.selector);
        settlement.registerIntent(_intent(alice, 3009), hex"1234");
    }

    function test_RevertIf_SessionKeyReused() public {
        ISettlement.Intent memory intent = _intent(bob, KEY_A); // alice's intent already holds KEY_A
        bytes memory sig = _sign(bobKey, intent);
        vm.expectRevert(ISettlement.Settlement__SessionKeyInUse.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_IntentRegisteredTwice() public {
        ISettlement.Intent memory intent = _intent(alice, KEY_A);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__IntentExists.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_UnsortedPayees() public {
        ISettlement.Intent memory intent = _intent(alice, 3010);
        intent.payees = new address[](2);
        (intent.payees[0], intent.payees[1]) = carol < dave ? (dave, carol) : (carol, dave);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__UnsortedPayees.selector);
        settlement.registerIntent(intent, sig);

        intent.payees[1] = intent.payees[0]; // duplicate
        sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__UnsortedPayees.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_InvalidSessionKey() public {
        ISettlement.Intent memory intent = _intent(alice, 0);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__InvalidSessionKey.selector);
        settlement.registerIntent(intent, sig);

        intent.sessionKeyHash = FIELD_MODULUS;
        sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__InvalidSessionKey.selector);
        settlement.registerIntent(intent, sig);

        intent.sessionKeyHash = FIELD_MODULUS - 1; // the largest field element is fine
        _register(aliceKey, intent);
    }

    function test_RevertIf_InvalidIntentParameters() public {
        ISettlement.Intent memory intent = _intent(alice, 3011);
        intent.validBefore = intent.validAfter;
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__InvalidValidityWindow.selector);
        settlement.registerIntent(intent, sig);

        intent = _intent(alice, 3011);
        intent.maxPerPayment = 0;
        sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__ZeroMaxPerPayment.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevokeIntent() public {
        vm.prank(alice);
        settlement.revokeIntent(idA);
        assertTrue(settlement.getIntent(idA).revoked, "revoked");
    }

    function test_RevertIf_RevokeByNonPayer() public {
        vm.expectRevert(ISettlement.Settlement__NotPayer.selector);
        vm.prank(bob);
        settlement.revokeIntent(idA);
        vm.expectRevert(ISettlement.Settlement__NotPayer.selector);
        vm.prank(bob);
        settlement.revokeIntent(keccak256("unknown"));
    }

    /*//////////////////////////////////////////////////////////////
                               SETTLEMENT
    //////////////////////////////////////////////////////////////*/

    function test_SettleBatch() public {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);

        for (uint256 i; i < 2; ++i) {
            ISettlement.IntentSettlement memory it = batch.intents[i];
            vm.expectEmit(true, true, false, true, address(settlement));
            emit IntentSettled(it.intentId, it.intentId == idA ? alice : bob, 0, it.lastNonce, it.count, it.total);
        }
        vm.expectEmit(true, true, false, true, address(settlement));
        emit PayoutSent(carol, address(usdc), 25e6);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit PayoutSent(dave, address(usdc), 17e6);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit BatchSettled(processor, address(usdc), uint64(block.timestamp), 4, 42e6);
        _settle(proof, batch);

        assertEq(usdc.balanceOf(carol), 25e6, "carol paid");
        assertEq(usdc.balanceOf(dave), 17e6, "dave paid");
        assertEq(settlement.balanceOf(alice, address(usdc)), 470e6, "alice debited");
        assertEq(settlement.balanceOf(bob, address(usdc)), 488e6, "bob debited");
        assertEq(usdc.balanceOf(address(settlement)), 958e6, "custody");
        ISettlement.IntentRecord memory a = settlement.getIntent(idA);
        ISettlement.IntentRecord memory b = settlement.getIntent(idB);
        assertEq(a.spent, 30e6, "alice spent");
        assertEq(b.spent, 12e6, "bob spent");
        assertEq(a.nextNonce, 3, "alice nextNonce = lastNonce + 1");
        assertEq(b.nextNonce, 1, "bob nextNonce = lastNonce + 1");
    }

    function test_SettleBatchAcrossNonceGap() public {
        uint256[8] memory proof = _proof(1);
        ISettlement.Batch memory first = _single(idA, 4, 3, 5e6);
        _arm(proof, first);
        _settle(proof, first);

        // Nonce 5 was refused by the gateway; the next batch starts at 6 and the proof's startNonce is 5.
        ISettlement.Batch memory second = _single(idA, 9, 2, 4e6);
        uint256[] memory pub = settlement.publicInputs(second);
        assertEq(pub[1 + slotsI] & (2 ** 40 - 1), 5, "startNonce is the stored nextNonce");
        proof = _proof(2);
        _arm(proof, second);
        _settle(proof, second);
        assertEq(settlement.getIntent(idA).nextNonce, 10, "nextNonce");
        assertEq(settlement.getIntent(idA).spent, 9e6, "spent accumulates");
    }

    function test_PublicInputsMatchProtocol() public view {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[] memory got = settlement.publicInputs(batch);
        uint256[] memory want = _expectedPublicInputs(batch);
        assertEq(got.length, 12, "K = 1 + 2I + P");
        for (uint256 i; i < want.length; ++i) {
            assertEq(got[i], want[i], "public input word");
        }
        assertEq(got[3], 0, "unused key slot");
        assertEq(got[1 + 4 + 3], 0, "unused intent word");
        assertEq(got[1 + 8 + 2], 0, "unused payee word");
        uint256 word = got[1 + 4 + (batch.intents[0].intentId == idA ? 0 : 1)];
        assertEq(word >> 184, 10e6, "cap in the top bits");
        assertEq((word >> 96) & (2 ** 88 - 1), 30e6, "total");
        assertEq((word >> 80) & 0xffff, 3, "count");
        assertEq((word >> 40) & (2 ** 40 - 1), 2, "lastNonce");
        assertEq(got[9] & (2 ** 160 - 1), uint256(uint160(carol)), "payee");
        assertEq(got[9] >> 160, 25e6, "amount");
    }

    function test_RevertIf_ForgedProof() public {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        proof[5] ^= 1;
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, batch);
    }

    function test_RevertIf_TamperedPublicInput() public {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        // Inflate one total and route the difference to carol: still balanced, but not what was proven.
        batch.intents[0].total += 1e6;
        batch.payouts[0].amount += 1e6;
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, batch);
    }

    function test_RevertIf_TamperedTimeRef() public {
        vm.warp(START + 10);
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        batch.timeRef -= 1;
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, batch);
    }

    function test_RevertIf_PayeeSwapped() public {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        batch.payouts[1].payee = makeAddr("mallory");
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, batch);
    }

    function testFuzz_RevertIf_ProofWordChanged(uint256 index, uint256 delta) public {
        index = bound(index, 0, 7);
        delta = bound(delta, 1, type(uint256).max);
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        unchecked {
            proof[index] += delta;
        }
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, batch);
    }

    function test_RevertIf_BatchReplayed() public {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        _settle(proof, batch);
        vm.expectRevert(ISettlement.Settlement__StaleNonce.selector);
        _settle(proof, batch);
    }

    function test_RevertIf_UnauthorizedProcessor() public {
        ISettlement.Batch memory batch = _single(idA, 0, 1, 1e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        vm.expectRevert(ISettlement.Settlement__UnauthorizedProcessor.selector);
        vm.prank(makeAddr("stranger"));
        settlement.settleBatch(proof, batch);

        vm.prank(alice);
        settlement.setProcessor(processor, false);
        vm.expectRevert(ISettlement.Settlement__UnauthorizedProcessor.selector);
        _settle(proof, batch);
    }

    function test_RevertIf_ProcessorNotNamedByIntent() public {
        address other = makeAddr("other processor");
        ISettlement.Intent memory intent = _intent(alice, 4001);
        intent.processor = other;
        bytes32 id = _register(aliceKey, intent);
        // The payer authorised `processor` globally, but this intent consents only to `other`.
        _armAndExpectRevert(_single(id, 0, 1, 1e6), ISettlement.Settlement__UnauthorizedProcessor.selector);

        vm.prank(alice);
        settlement.setProcessor(other, true);
        ISettlement.Batch memory batch = _single(id, 0, 1, 1e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        vm.prank(other);
        settlement.settleBatch(proof, batch);
        assertEq(usdc.balanceOf(carol), 1e6, "named processor settles");
    }

    function test_RevertIf_IntentExpired() public {
        vm.warp(START + 30 days);
        _armAndExpectRevert(_single(idA, 0, 1, 1e6), ISettlement.Settlement__IntentExpired.selector);
    }

    function test_RevertIf_IntentNotYetValid() public {
        ISettlement.Intent memory intent = _intent(alice, 4002);
        intent.validAfter = START + 1;
        bytes32 id = _register(aliceKey, intent);
        _armAndExpectRevert(_single(id, 0, 1, 1e6), ISettlement.Settlement__IntentNotYetValid.selector);
    }

    function test_RevertIf_IntentRevoked() public {
        vm.prank(alice);
        settlement.revokeIntent(idA);
        _armAndExpectRevert(_single(idA, 0, 1, 1e6), ISettlement.Settlement__IntentRevoked.selector);
    }

    function test_RevertIf_Overdraft() public {
        ISettlement.Intent memory intent = _intent(alice, 4003);
        intent.maxAmount = 10_000e6;
        bytes32 id = _register(aliceKey, intent);
        _armAndExpectRevert(_single(id, 0, 1, 500e6 + 1), ISettlement.Settlement__InsufficientBalance.selector);
    }

    function test_RevertIf_BudgetExceeded() public {
        uint256[8] memory proof = _proof(1);
        ISettlement.Batch memory first = _single(idA, 0, 1, 400e6);
        _arm(proof, first);
        _settle(proof, first);
        _fund(alice, 1_000e6);
        _armAndExpectRevert(_single(idA, 1, 1, 600e6 + 1), ISettlement.Settlement__IntentBudgetExceeded.selector);
    }

    function test_RevertIf_MalformedBatch() public {
        _armAndExpectRevert(_batch(0, 0), ISettlement.Settlement__EmptyBatch.selector);

        ISettlement.Batch memory tooMany = _batch(5, 0);
        _armAndExpectRevert(tooMany, ISettlement.Settlement__BatchTooLarge.selector);
        tooMany = _batch(1, 4);
        _armAndExpectRevert(tooMany, ISettlement.Settlement__BatchTooLarge.selector);

        ISettlement.Batch memory future = _single(idA, 0, 1, 1e6);
        future.timeRef = uint64(block.timestamp + 1);
        _armAndExpectRevert(future, ISettlement.Settlement__TimeRefInFuture.selector);

        ISettlement.Batch memory dup = _pair(1e6, 1e6, 1e6);
        dup.intents[1] = dup.intents[0];
        _armAndExpectRevert(dup, ISettlement.Settlement__UnsortedIntents.selector);

        ISettlement.Batch memory unsorted = _pair(1e6, 1e6, 1e6);
        (unsorted.intents[0], unsorted.intents[1]) = (unsorted.intents[1], unsorted.intents[0]);
        _armAndExpectRevert(unsorted, ISettlement.Settlement__UnsortedIntents.selector);

        _armAndExpectRevert(_single(keccak256("nope"), 0, 1, 1e6), ISettlement.Settlement__UnknownIntent.selector);

        ISettlement.Batch memory otherAsset = _single(idA, 0, 1, 1e6);
        otherAsset.asset = address(verifier);
        _armAndExpectRevert(otherAsset, ISettlement.Settlement__AssetMismatch.selector);

        _armAndExpectRevert(_single(idA, 0, 0, 1e6), ISettlement.Settlement__ZeroCount.selector);
        _armAndExpectRevert(_single(idA, type(uint40).max, 1, 1e6), ISettlement.Settlement__NonceExhausted.selector);
        _armAndExpectRevert(_single(idA, 0, 1, uint96(2 ** 88)), ISettlement.Settlement__AmountOutOfRange.selector);

        ISettlement.Batch memory unbalanced = _single(idA, 0, 1, 1e6);
        unbalanced.payouts[0].amount -= 1;
        _armAndExpectRevert(unbalanced, ISettlement.Settlement__UnbalancedBatch.selector);

        ISettlement.Batch memory zeroPayee = _single(idA, 0, 1, 1e6);
        zeroPayee.payouts[0].payee = address(0);
        _armAndExpectRevert(zeroPayee, ISettlement.Settlement__InvalidPayee.selector);

        ISettlement.Batch memory hugePayout = _single(idA, 0, 1, 1e6);
        hugePayout.payouts[0].amount = uint96(2 ** 93);
        _armAndExpectRevert(hugePayout, ISettlement.Settlement__AmountOutOfRange.selector);
    }

    function testFuzz_SettleSplitsAmounts(uint256 totalA, uint256 totalB, uint256 toCarol, uint256 lastNonce) public {
        totalA = bound(totalA, 0, 500e6);
        totalB = bound(totalB, 0, 500e6);
        toCarol = bound(toCarol, 0, totalA + totalB);
        lastNonce = bound(lastNonce, 0, type(uint40).max - 1);
        ISettlement.Batch memory batch = _pair(uint96(totalA), uint96(totalB), uint96(toCarol));
        batch.intents[0].lastNonce = uint40(lastNonce);
        uint256[8] memory proof = _proof(lastNonce);
        _arm(proof, batch);
        _settle(proof, batch);

        assertEq(usdc.balanceOf(carol), toCarol, "carol");
        assertEq(usdc.balanceOf(dave), totalA + totalB - toCarol, "dave");
        assertEq(
            settlement.balanceOf(alice, address(usdc)) + settlement.balanceOf(bob, address(usdc)) + totalA + totalB,
            1_000e6,
            "conservation"
        );
        assertEq(settlement.getIntent(batch.intents[0].intentId).nextNonce, lastNonce + 1, "nonce advanced");
    }

    function testFuzz_RevertIf_OverBudget(uint256 maxAmount, uint256 total) public {
        maxAmount = bound(maxAmount, 1, 400e6);
        total = bound(total, maxAmount + 1, 500e6);
        ISettlement.Intent memory intent = _intent(alice, 5005);
        intent.maxAmount = maxAmount;
        bytes32 id = _register(aliceKey, intent);
        _armAndExpectRevert(_single(id, 0, 1, uint96(total)), ISettlement.Settlement__IntentBudgetExceeded.selector);
    }
}

/// @notice Gas of a full-width batch (8 intents, 4 payees) with the test verifier; add the real verifier's
///         cost (~221k + ~6.2k per public input for snarkjs) for an on-chain estimate.
contract SettlementGasTest is SettlementBase {
    address private processor;
    ISettlement.Batch private batch;

    /// @dev Everything is set up in a previous call so the measured call sees cold storage, as on chain.
    function setUp() public {
        _deploy(8, 4, 1 days);
        processor = makeAddr("processor");
        bytes32[] memory ids = new bytes32[](8);
        for (uint256 i; i < 8; ++i) {
            (address payer, uint256 key) = makeAddrAndKey(string(abi.encodePacked("payer", bytes1(uint8(65 + i)))));
            _fund(payer, 100e6);
            vm.prank(payer);
            settlement.setProcessor(processor, true);
            ids[i] = _register(key, _intent(payer, 100 + i));
        }
        for (uint256 i = 1; i < 8; ++i) {
            for (uint256 j = i; j > 0 && ids[j - 1] > ids[j]; --j) {
                (ids[j - 1], ids[j]) = (ids[j], ids[j - 1]);
            }
        }
        batch.asset = address(usdc);
        batch.timeRef = uint64(block.timestamp);
        for (uint256 i; i < 8; ++i) {
            batch.intents.push(ISettlement.IntentSettlement(ids[i], 7, 8, 4e6));
        }
        for (uint256 k; k < 4; ++k) {
            address payee = makeAddr(string(abi.encodePacked("payee", bytes1(uint8(65 + k)))));
            usdc.mint(payee, 1); // payees usually hold a balance already
            batch.payouts.push(ISettlement.Payout(payee, 8e6));
        }
        _arm(_proof(1), batch);
    }

    function test_SettleBatchGas8x4() public {
        ISettlement.Batch memory b = batch;
        uint256[8] memory proof = _proof(1);
        vm.prank(processor);
        uint256 before = gasleft();
        settlement.settleBatch(proof, b);
        uint256 used = before - gasleft();
        emit log_named_uint("gas: settleBatch 8 intents / 4 payees, excluding verifier", used);
        assertLe(used, 320_000, "settle overhead budget");
    }

    event log_named_uint(string key, uint256 val);
}
