// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {PoseidonT5} from "poseidon-solidity/PoseidonT5.sol";

import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {AnsweringFallback, RevertingShapeVerifier} from "./mocks/BrokenShapeVerifiers.sol";
import {ExpectingVerifier} from "./mocks/ExpectingVerifier.sol";
import {SettlementBase} from "./utils/SettlementBase.sol";

/// @notice Unit and fuzz tests of Settlement over the ExpectingVerifier double: configuration, escrow,
///         processor consent, intents, and settlement including the guarantee's grace windows.
contract SettlementTest is SettlementBase {
    event Deposited(
        address indexed payer, address indexed token, address indexed processor, address from, uint256 amount
    );
    event WithdrawalRequested(
        address indexed payer, address indexed token, address indexed processor, uint256 amount, uint64 readyAt
    );
    event WithdrawalExecuted(address indexed payer, address indexed token, address indexed processor, uint256 amount);
    event WithdrawalCancelled(address indexed payer, address indexed token, address indexed processor);
    event ProcessorSet(address indexed payer, address indexed processor, bool allowed, uint64 until);
    event IntentRegistered(
        bytes32 indexed intentId, address indexed payer, address indexed asset, uint256 sessionKeyHash
    );
    event IntentRevoked(bytes32 indexed intentId, address indexed payer, uint64 settleableUntil);
    event IntentSettled(bytes32 indexed intentId, address indexed payer, uint64 window, uint128 nonces, uint96 total);
    event PayoutSent(address indexed payee, address indexed asset, uint96 amount);
    event BatchSettled(
        address indexed processor, address indexed asset, uint64 timeRef, uint256 mandates, uint256 total
    );

    uint256 private constant KEY_A = 1001;
    uint256 private constant KEY_B = 2002;
    uint64 private constant WINDOW = 1 hours;
    /// @dev Largest nonce window: nonces are below 2^40 = 2^33 windows of 128.
    uint64 private constant LAST_WINDOW = 2 ** 33 - 1;

    address private alice;
    uint256 private aliceKey;
    address private bob;
    uint256 private bobKey;
    address private carol;
    address private dave;
    /// @dev A second processor, Q, next to the fixture processor P.
    address private procQ;

    bytes32 private idA; // alice's intent
    bytes32 private idB; // bob's intent

    function setUp() public {
        _deploy(4, 3, 1 days, WINDOW);
        (alice, aliceKey) = makeAddrAndKey("alice");
        (bob, bobKey) = makeAddrAndKey("bob");
        carol = makeAddr("carol");
        dave = makeAddr("dave");
        procQ = makeAddr("processor Q");

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

    /// @dev One intent window paying its total to carol.
    function _single(bytes32 id, uint64 w, uint128 nonces, uint96 total)
        private
        view
        returns (ISettlement.Batch memory batch)
    {
        batch = _batch(1, 1);
        batch.intents[0] = ISettlement.IntentSettlement(id, w, nonces, total);
        batch.payouts[0] = ISettlement.Payout(carol, total);
    }

    /// @dev alice's nonces 1..3 and bob's nonce 0 (ascending by id), paying carol and dave.
    function _pair(uint96 totalA, uint96 totalB, uint96 toCarol) private view returns (ISettlement.Batch memory batch) {
        batch = _batch(2, 2);
        ISettlement.IntentSettlement memory a = ISettlement.IntentSettlement(idA, 0, 0xe, totalA);
        ISettlement.IntentSettlement memory b = ISettlement.IntentSettlement(idB, 0, 1, totalB);
        (batch.intents[0], batch.intents[1]) = idA < idB ? (a, b) : (b, a);
        batch.payouts[0] = ISettlement.Payout(carol, toCarol);
        batch.payouts[1] = ISettlement.Payout(dave, totalA + totalB - toCarol);
    }

    function _settle(uint256[8] memory proof, ISettlement.Batch memory batch) private {
        vm.prank(processor);
        settlement.settleBatch(proof, batch);
    }

    function _armAndSettle(ISettlement.Batch memory batch) private {
        _armAndSettleAs(processor, batch);
    }

    function _armAndSettleAs(address proc, ISettlement.Batch memory batch) private {
        uint256[8] memory proof = _proof(uint256(keccak256(abi.encode(batch))));
        _arm(proof, batch);
        vm.prank(proc);
        settlement.settleBatch(proof, batch);
    }

    /// @dev Arms the verifier for the batch, so the expected error is not the proof's.
    function _armAndExpectRevert(ISettlement.Batch memory batch, bytes4 selector) private {
        _armAndExpectRevertAs(processor, batch, selector);
    }

    function _armAndExpectRevertAs(address proc, ISettlement.Batch memory batch, bytes4 selector) private {
        uint256[8] memory proof = _proof(7);
        _arm(proof, batch);
        vm.expectRevert(selector);
        vm.prank(proc);
        settlement.settleBatch(proof, batch);
    }

    /// @dev An EIP-2612 permit of `value` from `owner` to the Settlement, signed with `key`.
    function _permit(uint256 key, address owner, uint256 value, uint256 deadline)
        private
        view
        returns (uint8 v, bytes32 r, bytes32 s)
    {
        bytes32 structHash = keccak256(
            abi.encode(
                keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)"),
                owner,
                address(settlement),
                value,
                usdc.nonces(owner),
                deadline
            )
        );
        return vm.sign(key, keccak256(abi.encodePacked("\x19\x01", usdc.DOMAIN_SEPARATOR(), structHash)));
    }

    /// @dev An intent of alice under `keyHash` naming processor Q.
    function _intentQ(uint256 keyHash) private view returns (ISettlement.Intent memory intent) {
        intent = _intent(alice, keyHash);
        intent.processor = procQ;
    }

    function _shape(uint256 n, uint256 i, uint256 p, uint256 depth, bool dev) private returns (address) {
        return address(new ExpectingVerifier(n, i, p, depth, dev));
    }

    /*//////////////////////////////////////////////////////////////
                             CONFIGURATION
    //////////////////////////////////////////////////////////////*/

    function test_Constructor() public view {
        assertEq(settlement.verifier(), address(verifier), "verifier");
        assertEq(settlement.batchSize(), BATCH_SIZE, "N from batchShape");
        assertEq(settlement.intentSlots(), 4, "I from batchShape");
        assertEq(settlement.payeeSlots(), 3, "P from batchShape");
        assertEq(settlement.withdrawalDelay(), 1 days, "delay");
        assertEq(settlement.settlementWindow(), WINDOW, "window");
        assertEq(settlement.PAYEE_TREE_DEPTH(), 8, "D");
        bytes4 expected = bytes4(keccak256("verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[12])"));
        assertEq(bytes32(settlement.verifierSelector()), bytes32(expected), "selector spells K = 12");
    }

    function test_ConstructorAcceptsLargestShape() public {
        Settlement wide = new Settlement(_shape(1, 256, 256, 8, true), WINDOW, WINDOW);
        assertEq(wide.intentSlots(), 256, "I");
        assertEq(wide.payeeSlots(), 256, "P");
        assertEq(wide.withdrawalDelay(), wide.settlementWindow(), "delay == window is allowed");
        bytes4 expected = bytes4(keccak256("verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[769])"));
        assertEq(bytes32(wide.verifierSelector()), bytes32(expected), "K = 1 + 2 * 256 + 256");
    }

    function test_RevertIf_ConstructorInvalidShape() public {
        address[6] memory bad = [
            _shape(0, 4, 3, 8, true),
            _shape(16, 0, 3, 8, true),
            _shape(16, 4, 0, 8, true),
            _shape(16, 257, 3, 8, true),
            _shape(16, 4, 257, 8, true),
            makeAddr("eoa")
        ];
        for (uint256 i; i < bad.length; ++i) {
            vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
            new Settlement(bad[i], 1 days, WINDOW);
        }
    }

    function test_RevertIf_PayeeTreeDepthNot8() public {
        uint256[3] memory depths = [uint256(0), 7, 9];
        for (uint256 i; i < depths.length; ++i) {
            address v = _shape(16, 4, 3, depths[i], true);
            vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
            new Settlement(v, 1 days, WINDOW);
        }
    }

    function test_RevertIf_ZeroSettlementWindow() public {
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(address(verifier), 1 days, 0);
    }

    function test_RevertIf_WithdrawalDelayShorterThanWindow() public {
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(address(verifier), WINDOW - 1, WINDOW);
        new Settlement(address(verifier), WINDOW, WINDOW); // equal is the tightest allowed
    }

    /// @dev A contract without batchShape(), or whose batchShape() reverts, is refused with InvalidConfig;
    ///      beside it, a verifier that answers batchShape() deploys.
    function test_RevertIf_VerifierWithoutBatchShape() public {
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(address(usdc), 1 days, WINDOW); // no batchShape(), no fallback

        address reverting = address(new RevertingShapeVerifier());
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        new Settlement(reverting, 1 days, WINDOW);

        Settlement ok = new Settlement(_shape(16, 4, 3, 8, true), 1 days, WINDOW);
        assertEq(ok.intentSlots(), 4, "a verifier with batchShape() deploys");
    }

    /// @dev A contract whose fallback answers batchShape() with fewer than five words: the call succeeds,
    ///      so try/catch cannot catch the failing decode, and the constructor reverts without data rather
    ///      than with InvalidConfig. Deployment still fails, which is what matters; the error is pinned so
    ///      a change is noticed.
    function test_RevertIf_VerifierAnswersBatchShapeShort() public {
        bytes[3] memory answers = [bytes(""), abi.encode(uint256(1)), abi.encode(uint256(16), 4, 3, 8)];
        for (uint256 i; i < answers.length; ++i) {
            address v = address(new AnsweringFallback(answers[i]));
            vm.expectRevert(bytes(""));
            new Settlement(v, 1 days, WINDOW);
        }
        // Five well-formed words are a shape, whoever answers them.
        address five = address(new AnsweringFallback(abi.encode(uint256(16), 4, 3, 8, true)));
        assertEq(new Settlement(five, 1 days, WINDOW).payeeSlots(), 3, "five words deploy");
    }

    function test_RevertIf_DevelopmentVerifierOnPublicChain() public {
        vm.chainId(1);
        vm.expectRevert(ISettlement.Settlement__DevelopmentVerifier.selector);
        new Settlement(address(verifier), 1 days, WINDOW);
        vm.chainId(8453);
        vm.expectRevert(ISettlement.Settlement__DevelopmentVerifier.selector);
        new Settlement(address(verifier), 1 days, WINDOW);
    }

    function test_DevelopmentVerifierOnDevelopmentChains() public {
        vm.chainId(1337);
        new Settlement(address(verifier), 1 days, WINDOW);
        vm.chainId(31337);
        new Settlement(address(verifier), 1 days, WINDOW);
        vm.chainId(1);
        Settlement production = new Settlement(_shape(16, 4, 3, 8, false), 1 days, WINDOW);
        assertEq(production.intentSlots(), 4, "a ceremony verifier deploys anywhere");
    }

    /*//////////////////////////////////////////////////////////////
                                 ESCROW
    //////////////////////////////////////////////////////////////*/

    function test_Deposit() public {
        usdc.mint(carol, 20e6);
        vm.startPrank(carol);
        usdc.approve(address(settlement), 20e6);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit Deposited(carol, address(usdc), processor, carol, 20e6);
        settlement.deposit(address(usdc), processor, 20e6);
        vm.stopPrank();
        assertEq(_escrow(carol), 20e6, "escrow with the processor");
        assertEq(settlement.balanceOf(carol, address(usdc), procQ), 0, "not with another processor");
        assertEq(usdc.balanceOf(address(settlement)), 1_020e6, "custody");
    }

    function test_DepositFor() public {
        usdc.mint(dave, 20e6);
        vm.startPrank(dave);
        usdc.approve(address(settlement), 20e6);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit Deposited(carol, address(usdc), procQ, dave, 20e6);
        settlement.depositFor(carol, address(usdc), procQ, 20e6);
        vm.stopPrank();
        assertEq(settlement.balanceOf(carol, address(usdc), procQ), 20e6, "credited to carol with Q");
        assertEq(_escrow(carol), 0, "not with P");
        assertEq(settlement.balanceOf(dave, address(usdc), procQ), 0, "not to dave");
    }

    function test_DepositWithPermit() public {
        uint256 deadline = block.timestamp + 1 hours;
        usdc.mint(alice, 30e6);
        (uint8 v, bytes32 r, bytes32 s) = _permit(aliceKey, alice, 30e6, deadline);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit Deposited(alice, address(usdc), procQ, alice, 30e6);
        vm.prank(alice);
        settlement.depositWithPermit(address(usdc), procQ, 30e6, deadline, v, r, s);
        assertEq(settlement.balanceOf(alice, address(usdc), procQ), 30e6, "escrow with Q");
        assertEq(_escrow(alice), 500e6, "escrow with P unchanged");
    }

    function test_RevertIf_DepositZero() public {
        vm.expectRevert(ISettlement.Settlement__ZeroAmount.selector);
        settlement.deposit(address(usdc), processor, 0);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        settlement.depositFor(address(0), address(usdc), processor, 1);
    }

    /// @dev Escrow held for no processor could never be debited: every deposit path refuses processor 0.
    function test_RevertIf_DepositZeroProcessor() public {
        usdc.mint(carol, 3e6);
        vm.startPrank(carol);
        usdc.approve(address(settlement), 3e6);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        settlement.deposit(address(usdc), address(0), 1e6);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        settlement.depositFor(dave, address(usdc), address(0), 1e6);
        vm.stopPrank();

        uint256 deadline = block.timestamp + 1 hours;
        usdc.mint(alice, 1e6);
        (uint8 v, bytes32 r, bytes32 s) = _permit(aliceKey, alice, 1e6, deadline);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        vm.prank(alice);
        settlement.depositWithPermit(address(usdc), address(0), 1e6, deadline, v, r, s);

        // The same calls with a processor go through, even one nobody has consented to.
        address nobody = makeAddr("unconsented processor");
        vm.startPrank(carol);
        settlement.deposit(address(usdc), nobody, 1e6);
        settlement.depositFor(dave, address(usdc), nobody, 1e6);
        vm.stopPrank();
        vm.prank(alice);
        settlement.depositWithPermit(address(usdc), nobody, 1e6, deadline, v, r, s);
        assertEq(settlement.balanceOf(carol, address(usdc), nobody), 1e6, "carol");
        assertEq(settlement.balanceOf(dave, address(usdc), nobody), 1e6, "dave");
        assertEq(settlement.balanceOf(alice, address(usdc), nobody), 1e6, "alice");
        assertEq(settlement.balanceOf(carol, address(usdc), address(0)), 0, "nothing under processor 0");
    }

    function test_WithdrawalFlow() public {
        vm.startPrank(alice);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit WithdrawalRequested(alice, address(usdc), processor, 200e6, START + 1 days);
        settlement.requestWithdrawal(address(usdc), processor, 200e6);
        ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(alice, address(usdc), processor);
        assertEq(w.amount, 200e6, "requested");
        assertEq(w.readyAt, START + 1 days, "readyAt");
        assertEq(_escrow(alice), 500e6, "still escrowed until executed");

        vm.warp(START + 1 days);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit WithdrawalExecuted(alice, address(usdc), processor, 200e6);
        assertEq(settlement.executeWithdrawal(address(usdc), processor), 200e6, "paid");
        vm.stopPrank();
        assertEq(usdc.balanceOf(alice), 200e6, "received");
        assertEq(_escrow(alice), 300e6, "escrow left");
        assertEq(settlement.pendingWithdrawal(alice, address(usdc), processor).amount, 0, "request cleared");
    }

    function test_RevertIf_WithdrawalExceedsBalance() public {
        vm.expectRevert(ISettlement.Settlement__InsufficientBalance.selector);
        vm.prank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 500e6 + 1);
    }

    /// @dev A withdrawal is bounded by the one account it leaves, not by the payer's escrow as a whole.
    function test_RevertIf_WithdrawalExceedsAccount() public {
        _fundWith(alice, procQ, 100e6);
        vm.startPrank(alice);
        vm.expectRevert(ISettlement.Settlement__InsufficientBalance.selector);
        settlement.requestWithdrawal(address(usdc), procQ, 100e6 + 1); // alice holds 600e6 in all
        settlement.requestWithdrawal(address(usdc), procQ, 100e6);
        vm.stopPrank();
    }

    function test_RevertIf_WithdrawalZero() public {
        vm.expectRevert(ISettlement.Settlement__ZeroAmount.selector);
        vm.prank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 0);
    }

    function test_RevertIf_WithdrawalNotReady() public {
        vm.startPrank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 1e6);
        vm.warp(START + 1 days - 1);
        vm.expectRevert(ISettlement.Settlement__WithdrawalNotReady.selector);
        settlement.executeWithdrawal(address(usdc), processor);
        vm.stopPrank();
    }

    function test_CancelWithdrawal() public {
        vm.startPrank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 1e6);
        vm.expectEmit(true, true, true, true, address(settlement));
        emit WithdrawalCancelled(alice, address(usdc), processor);
        settlement.cancelWithdrawal(address(usdc), processor);
        vm.warp(START + 2 days);
        vm.expectRevert(ISettlement.Settlement__NoWithdrawalPending.selector);
        settlement.executeWithdrawal(address(usdc), processor);
        vm.expectRevert(ISettlement.Settlement__NoWithdrawalPending.selector);
        settlement.cancelWithdrawal(address(usdc), processor);
        vm.stopPrank();
    }

    /// @dev Requests, cancellations and executions are per (payer, token, processor).
    function test_WithdrawalsArePerProcessor() public {
        _fundWith(alice, procQ, 100e6);
        vm.startPrank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 200e6);
        vm.warp(START + 1 hours);
        settlement.requestWithdrawal(address(usdc), procQ, 50e6);
        assertEq(settlement.pendingWithdrawal(alice, address(usdc), processor).readyAt, START + 1 days, "P readyAt");
        assertEq(settlement.pendingWithdrawal(alice, address(usdc), procQ).readyAt, START + 1 hours + 1 days, "Q");

        vm.expectRevert(ISettlement.Settlement__NoWithdrawalPending.selector);
        settlement.executeWithdrawal(address(usdc), makeAddr("third processor"));

        settlement.cancelWithdrawal(address(usdc), procQ);
        assertEq(settlement.pendingWithdrawal(alice, address(usdc), processor).amount, 200e6, "P request kept");
        vm.expectRevert(ISettlement.Settlement__NoWithdrawalPending.selector);
        settlement.cancelWithdrawal(address(usdc), procQ);

        vm.warp(START + 1 days);
        assertEq(settlement.executeWithdrawal(address(usdc), processor), 200e6, "paid from P");
        vm.stopPrank();
        assertEq(_escrow(alice), 300e6, "P account debited");
        assertEq(settlement.balanceOf(alice, address(usdc), procQ), 100e6, "Q account untouched");
        assertEq(usdc.balanceOf(alice), 200e6, "received");
    }

    function test_RevertIf_WithdrawalRacedAgainstSettlement() public {
        // alice tries to pull everything right after a gateway served her; the batch lands a window later.
        vm.prank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 500e6);

        ISettlement.Batch memory batch = _single(idA, 0, 1, 120e6);
        vm.warp(START + WINDOW - 1);
        _armAndSettle(batch); // funds under a pending withdrawal remain debitable

        vm.expectRevert(ISettlement.Settlement__WithdrawalNotReady.selector);
        vm.prank(alice);
        settlement.executeWithdrawal(address(usdc), processor);

        vm.warp(START + 1 days);
        vm.prank(alice);
        assertEq(settlement.executeWithdrawal(address(usdc), processor), 380e6, "only the remainder is paid");
        assertEq(usdc.balanceOf(alice), 380e6, "alice received remainder");
        assertEq(usdc.balanceOf(carol), 120e6, "carol was paid first");
        assertEq(_escrow(alice), 0, "escrow drained");
    }

    function testFuzz_DepositAndWithdraw(uint256 amount, uint256 requested, uint256 wait) public {
        amount = bound(amount, 1, 1e30);
        requested = bound(requested, 1, amount);
        wait = bound(wait, 1 days, 365 days);
        _fund(carol, amount);
        vm.startPrank(carol);
        settlement.requestWithdrawal(address(usdc), processor, requested);
        vm.warp(START + wait);
        settlement.executeWithdrawal(address(usdc), processor);
        vm.stopPrank();
        assertEq(usdc.balanceOf(carol), requested, "withdrawn");
        assertEq(_escrow(carol), amount - requested, "left");
    }

    /// @dev Account i of the isolation fuzz: (alice, P), (alice, Q), (bob, P), (bob, Q).
    function _account(uint256 i) private view returns (address payer, address proc) {
        return (i < 2 ? alice : bob, i % 2 == 0 ? processor : procQ);
    }

    /// @dev Every account holds `balances`, custody is their sum, and every account but `acting` still has
    ///      the pending withdrawal in `requests`.
    function _checkAccounts(uint256 acting, uint256[4] memory balances, ISettlement.Withdrawal[4] memory requests)
        private
        view
    {
        uint256 custody;
        for (uint256 i; i < 4; ++i) {
            (address payer, address proc) = _account(i);
            uint256 balance = settlement.balanceOf(payer, address(usdc), proc);
            custody += balance;
            assertEq(balance, balances[i], "account balance");
            if (i == acting) continue;
            ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(payer, address(usdc), proc);
            assertEq(w.amount, requests[i].amount, "other account's request amount");
            assertEq(w.readyAt, requests[i].readyAt, "other account's request readyAt");
        }
        assertEq(usdc.balanceOf(address(settlement)), custody, "custody == sum over (payer, processor)");
    }

    /// @dev One escrow operation on (payer, proc): 0 deposit, 1 deposit by a third party, 2 request,
    ///      3 cancel, 4 execute (waiting for readyAt). Returns the balance change as (credit, debit).
    function _escrowOp(address payer, address proc, uint256 op, uint256 balance)
        private
        returns (uint256 credit, uint256 debit)
    {
        uint256 amount = op >> 8;
        uint256 kind = op % 5;
        if (kind == 0) {
            credit = bound(amount, 1, 1e30);
            _fundWith(payer, proc, credit);
        } else if (kind == 1) {
            credit = bound(amount, 1, 1e30);
            usdc.mint(dave, credit);
            vm.startPrank(dave);
            usdc.approve(address(settlement), credit);
            settlement.depositFor(payer, address(usdc), proc, credit);
            vm.stopPrank();
        } else if (kind == 2) {
            if (balance == 0) return (0, 0);
            vm.prank(payer);
            settlement.requestWithdrawal(address(usdc), proc, bound(amount, 1, balance));
        } else if (kind == 3) {
            if (settlement.pendingWithdrawal(payer, address(usdc), proc).amount == 0) return (0, 0);
            vm.prank(payer);
            settlement.cancelWithdrawal(address(usdc), proc);
        } else {
            ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(payer, address(usdc), proc);
            if (w.amount == 0) return (0, 0);
            if (block.timestamp < w.readyAt) vm.warp(w.readyAt);
            vm.prank(payer);
            debit = settlement.executeWithdrawal(address(usdc), proc);
        }
    }

    /// @dev Deposits (own and by a third party), withdrawal requests, cancellations and executions on one
    ///      (payer, processor) account never change another account's balance or pending withdrawal, and
    ///      custody stays the sum of the accounts.
    function testFuzz_EscrowAccountsAreIsolated(uint256 which, uint256[8] memory ops) public {
        _fundWith(alice, procQ, 300e6);
        _fundWith(bob, procQ, 200e6);
        uint256[4] memory balances;
        ISettlement.Withdrawal[4] memory requests;
        for (uint256 i; i < 4; ++i) {
            (address payer, address proc) = _account(i);
            vm.prank(payer); // a pending request on every account, so "untouched" covers requests too
            settlement.requestWithdrawal(address(usdc), proc, 10e6 + i);
            balances[i] = settlement.balanceOf(payer, address(usdc), proc);
            requests[i] = settlement.pendingWithdrawal(payer, address(usdc), proc);
        }

        uint256 acting = which % 4;
        (address actor, address actorProc) = _account(acting);
        for (uint256 k; k < ops.length; ++k) {
            (uint256 credit, uint256 debit) = _escrowOp(actor, actorProc, ops[k], balances[acting]);
            balances[acting] = balances[acting] + credit - debit;
            _checkAccounts(acting, balances, requests);
        }
    }

    /*//////////////////////////////////////////////////////////////
                               PROCESSORS
    //////////////////////////////////////////////////////////////*/

    function test_SetProcessor() public {
        assertTrue(settlement.isProcessor(alice, processor), "granted in setUp");
        assertEq(settlement.processorConsentUntil(alice, processor), type(uint64).max, "until: never");

        vm.expectEmit(true, true, false, true, address(settlement));
        emit ProcessorSet(alice, processor, false, START + WINDOW);
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        assertEq(settlement.processorConsentUntil(alice, processor), START + WINDOW, "lapses a window later");
        assertTrue(settlement.isProcessor(alice, processor), "still settles served mandates");

        vm.warp(START + WINDOW - 1);
        assertTrue(settlement.isProcessor(alice, processor), "last second of the window");
        vm.warp(START + WINDOW);
        assertFalse(settlement.isProcessor(alice, processor), "lapsed");
        assertTrue(settlement.isProcessor(bob, processor), "per payer");
    }

    function test_RevertIf_SetProcessorZeroAddress() public {
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        vm.prank(alice);
        settlement.setProcessor(address(0), true);
    }

    function test_SetProcessorFalseTwiceDoesNotExtend() public {
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        vm.warp(START + WINDOW / 2);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit ProcessorSet(alice, processor, false, START + WINDOW);
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        assertEq(settlement.processorConsentUntil(alice, processor), START + WINDOW, "not pushed back");

        vm.warp(START + WINDOW);
        _armAndExpectRevert(_single(idA, 0, 1, 1e6), ISettlement.Settlement__UnauthorizedProcessor.selector);
    }

    function test_SetProcessorReauthoriseRestoresMax() public {
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        vm.warp(START + 2 * WINDOW);
        assertFalse(settlement.isProcessor(alice, processor), "lapsed");

        vm.expectEmit(true, true, false, true, address(settlement));
        emit ProcessorSet(alice, processor, true, type(uint64).max);
        vm.prank(alice);
        settlement.setProcessor(processor, true);
        assertEq(settlement.processorConsentUntil(alice, processor), type(uint64).max, "until restored");
        _armAndSettle(_single(idA, 0, 1, 1e6));
        assertEq(usdc.balanceOf(carol), 1e6, "settles again");
    }

    function test_SetProcessorFalseWithoutConsentStaysLapsed() public {
        vm.prank(carol);
        settlement.setProcessor(processor, false);
        assertEq(settlement.processorConsentUntil(carol, processor), 0, "withdrawing grants nothing");
        assertFalse(settlement.isProcessor(carol, processor), "never authorised");
    }

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    /// @dev Known answers of circomlibjs buildPoseidon() for 4 inputs (the circuit's Poseidon(4)).
    function test_PoseidonMatchesCircomlib() public pure {
        assertEq(
            PoseidonT5.hash([uint256(1), 2, 3, 4]),
            18821383157269793795438455681495246036402687001665670618754263018637548127333,
            "Poseidon(1, 2, 3, 4)"
        );
        assertEq(
            PoseidonT5.hash([uint256(0), 0, 0, 0]),
            2351654555892372227640888372176282444150254868378439619268573230312091195718,
            "Poseidon(0, 0, 0, 0)"
        );
        assertEq(
            PoseidonT5.hash([uint256(123456789), 987654321, 0, 10000000]),
            1024367981847490169655787328986520485249480068900013691531715234166825413636,
            "Poseidon(123456789, 987654321, 0, 10000000)"
        );
    }

    function test_RegisterIntent() public {
        ISettlement.Intent memory intent = _intent(alice, 3003);
        intent.payeesRoot = uint256(keccak256("payees")) % FIELD_MODULUS;
        bytes memory sig = _sign(aliceKey, intent);
        bytes32 expectedId = _digest(intent);

        vm.expectEmit(true, true, true, true, address(settlement));
        emit IntentRegistered(expectedId, alice, address(usdc), 3003);
        vm.prank(makeAddr("relayer"));
        bytes32 id = settlement.registerIntent(intent, sig);

        assertEq(id, expectedId, "id is the EIP-712 digest");
        assertEq(settlement.intentDigest(intent), expectedId, "intentDigest view");
        ISettlement.IntentRecord memory rec = settlement.getIntent(id);
        assertEq(rec.payer, alice, "payer");
        assertEq(rec.asset, address(usdc), "asset");
        assertEq(rec.sessionKeyHash, 3003, "key");
        assertEq(rec.maxAmount, 1_000e6, "maxAmount");
        assertEq(rec.maxPerPayment, 10e6, "maxPerPayment");
        assertEq(rec.validAfter, START - 1 days, "validAfter");
        assertEq(rec.validBefore, START + 30 days, "validBefore");
        assertEq(rec.payeesRoot, intent.payeesRoot, "payeesRoot");
        assertEq(rec.processor, processor, "processor");
        assertEq(rec.spent, 0, "spent");
        assertEq(rec.revokedAt, 0, "not revoked");
        assertEq(rec.commitment, _commitment(expectedId, intent), "commitment");
        assertEq(
            rec.commitment,
            PoseidonT5.hash([uint256(expectedId) >> 8, 3003, intent.payeesRoot, 10e6]),
            "Poseidon(intentId >> 8, keyHash, payeesRoot, cap)"
        );
    }

    function test_GetIntentUnknown() public view {
        ISettlement.IntentRecord memory rec = settlement.getIntent(keccak256("unknown"));
        assertEq(rec.payer, address(0), "unknown intent reads as payer 0");
        assertEq(rec.commitment, 0, "no commitment");
    }

    function test_RegisterIntentSaturatesCaps() public {
        ISettlement.Intent memory intent = _intent(alice, 3004);
        intent.maxAmount = type(uint256).max;
        intent.maxPerPayment = type(uint256).max;
        intent.validBefore = type(uint64).max;
        bytes32 id = _register(aliceKey, intent);
        ISettlement.IntentRecord memory rec = settlement.getIntent(id);
        assertEq(rec.maxAmount, type(uint96).max, "maxAmount saturated");
        assertEq(rec.maxPerPayment, type(uint64).max, "cap = min(maxPerPayment, 2^64 - 1)");
        assertEq(rec.validBefore, type(uint32).max, "validBefore saturated");
        assertEq(
            rec.commitment, PoseidonT5.hash([uint256(id) >> 8, 3004, 0, type(uint64).max]), "commitment uses the cap"
        );
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
        intent.payeesRoot = 1;
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

    /// @dev Session keys need not be unique, so nobody can squat a key hash to block an intent.
    function test_RegisterIntentsSharingSessionKey() public {
        ISettlement.Intent memory squat = _intent(bob, KEY_A); // alice's intent already uses KEY_A
        bytes32 idSquat = _register(bobKey, squat);
        ISettlement.Intent memory second = _intent(alice, KEY_A);
        second.salt = keccak256("second");
        bytes32 idSecond = _register(aliceKey, second);
        assertEq(settlement.getIntent(idSquat).sessionKeyHash, KEY_A, "bob's intent holds KEY_A");
        assertEq(settlement.getIntent(idSecond).sessionKeyHash, KEY_A, "alice's second intent too");
        assertTrue(
            settlement.getIntent(idA).commitment != settlement.getIntent(idSquat).commitment
                && settlement.getIntent(idA).commitment != settlement.getIntent(idSecond).commitment,
            "distinct commitments"
        );

        bytes32[3] memory ids = [idA, idSquat, idSecond];
        for (uint256 i = 1; i < 3; ++i) {
            for (uint256 j = i; j > 0 && ids[j - 1] > ids[j]; --j) {
                (ids[j - 1], ids[j]) = (ids[j], ids[j - 1]);
            }
        }
        ISettlement.Batch memory batch = _batch(3, 1);
        for (uint256 i; i < 3; ++i) {
            batch.intents[i] = ISettlement.IntentSettlement(ids[i], 0, 1, 2e6);
        }
        batch.payouts[0] = ISettlement.Payout(carol, 6e6);
        _armAndSettle(batch);
        assertEq(_escrow(alice), 496e6, "alice paid for two intents");
        assertEq(_escrow(bob), 498e6, "bob paid for his");
        for (uint256 i; i < 3; ++i) {
            assertEq(settlement.settledNonces(ids[i], 0), 1, "nonce 0 of each intent");
        }
    }

    function test_RevertIf_IntentRegisteredTwice() public {
        ISettlement.Intent memory intent = _intent(alice, KEY_A);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__IntentExists.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_InvalidPayeesRoot() public {
        ISettlement.Intent memory intent = _intent(alice, 3010);
        uint256[2] memory roots = [FIELD_MODULUS, type(uint256).max];
        for (uint256 i; i < roots.length; ++i) {
            intent.payeesRoot = roots[i];
            bytes memory sig = _sign(aliceKey, intent);
            vm.expectRevert(ISettlement.Settlement__InvalidPayeesRoot.selector);
            settlement.registerIntent(intent, sig);
        }
        intent.payeesRoot = FIELD_MODULUS - 1; // the largest field element is fine
        assertEq(settlement.getIntent(_register(aliceKey, intent)).payeesRoot, FIELD_MODULUS - 1, "stored");
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

    function test_RevertIf_InvalidValidityWindow() public {
        ISettlement.Intent memory intent = _intent(alice, 3011);
        intent.validBefore = intent.validAfter;
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__InvalidValidityWindow.selector);
        settlement.registerIntent(intent, sig);

        intent.validAfter = intent.validBefore + 1;
        sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__InvalidValidityWindow.selector);
        settlement.registerIntent(intent, sig);
    }

    /// @dev validBefore is stored saturated at 2^32 - 1, so validAfter >= 2^32 - 1 would leave no second to
    ///      settle in: refused. validAfter = 2^32 - 2 registers and settles in its one second.
    function test_RevertIf_ValidAfterNotBelowUint32Max() public {
        ISettlement.Intent memory intent = _intent(alice, 3012);
        uint64[3] memory refused = [uint64(2 ** 32), 2 ** 32 - 1, type(uint64).max - 1];
        for (uint256 i; i < refused.length; ++i) {
            intent.validAfter = refused[i];
            intent.validBefore = type(uint64).max;
            bytes memory sig = _sign(aliceKey, intent);
            vm.expectRevert(ISettlement.Settlement__InvalidValidityWindow.selector);
            settlement.registerIntent(intent, sig);
        }

        intent.validAfter = 2 ** 32 - 2; // the largest accepted
        intent.validBefore = 2 ** 32 + 1 days;
        bytes32 id = _register(aliceKey, intent);
        ISettlement.IntentRecord memory rec = settlement.getIntent(id);
        assertEq(rec.validAfter, 2 ** 32 - 2, "validAfter stored");
        assertEq(rec.validBefore, 2 ** 32 - 1, "validBefore saturated");

        vm.warp(2 ** 32 - 3);
        _armAndExpectRevert(_single(id, 0, 1, 1e6), ISettlement.Settlement__IntentNotYetValid.selector);
        vm.warp(2 ** 32 - 2);
        _armAndSettle(_single(id, 0, 1, 1e6));
        assertEq(settlement.getIntent(id).spent, 1e6, "settled in its one second");
        vm.warp(2 ** 32 - 1);
        _armAndExpectRevert(_single(id, 0, 2, 1e6), ISettlement.Settlement__IntentExpired.selector);
    }

    /// @dev Every intent registerIntent accepts has a second it settles in: timeRef = max(validAfter, now).
    function testFuzz_RegisteredIntentHasSettleableSecond(uint64 validAfter, uint64 validBefore) public {
        validAfter = uint64(bound(validAfter, 0, 2 ** 32 - 2));
        uint256 lowest = validAfter > START ? validAfter : START;
        validBefore = uint64(bound(validBefore, lowest + 1, type(uint64).max));
        ISettlement.Intent memory intent = _intent(alice, 3020);
        (intent.validAfter, intent.validBefore) = (validAfter, validBefore);
        bytes32 id = _register(aliceKey, intent);

        vm.warp(lowest);
        _armAndSettle(_single(id, 0, 1, 1e6));
        assertEq(settlement.getIntent(id).spent, 1e6, "settled");
    }

    function test_RevertIf_ZeroMaxPerPayment() public {
        ISettlement.Intent memory intent = _intent(alice, 3013);
        intent.maxPerPayment = 0;
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__ZeroMaxPerPayment.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_ZeroMaxAmount() public {
        ISettlement.Intent memory intent = _intent(alice, 3014);
        intent.maxAmount = 0;
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__ZeroMaxAmount.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_IntentExpiredAtRegistration() public {
        ISettlement.Intent memory intent = _intent(alice, 3015);
        intent.validBefore = uint64(block.timestamp);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__IntentExpired.selector);
        settlement.registerIntent(intent, sig);

        intent.validBefore = uint64(block.timestamp) + 1; // one second left is enough
        _register(aliceKey, intent);
    }

    function test_RevertIf_ZeroProcessor() public {
        ISettlement.Intent memory intent = _intent(alice, 3016);
        intent.processor = address(0);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevertIf_ZeroAsset() public {
        ISettlement.Intent memory intent = _intent(alice, 3017);
        intent.asset = address(0);
        bytes memory sig = _sign(aliceKey, intent);
        vm.expectRevert(ISettlement.Settlement__ZeroAddress.selector);
        settlement.registerIntent(intent, sig);
    }

    function test_RevokeIntent() public {
        vm.expectEmit(true, true, false, true, address(settlement));
        emit IntentRevoked(idA, alice, START + WINDOW);
        vm.prank(alice);
        settlement.revokeIntent(idA);
        assertEq(settlement.getIntent(idA).revokedAt, START, "revokedAt");
    }

    function test_RevokeIntentTwiceDoesNotExtend() public {
        vm.prank(alice);
        settlement.revokeIntent(idA);
        vm.warp(START + WINDOW / 2);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit IntentRevoked(idA, alice, START + WINDOW);
        vm.prank(alice);
        settlement.revokeIntent(idA);
        assertEq(settlement.getIntent(idA).revokedAt, START, "first revocation counts");

        vm.warp(START + WINDOW);
        ISettlement.Batch memory batch = _single(idA, 0, 1, 1e6);
        batch.timeRef = START + WINDOW / 2;
        _armAndExpectRevert(batch, ISettlement.Settlement__IntentRevoked.selector);
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
            emit IntentSettled(it.intentId, it.intentId == idA ? alice : bob, 0, it.nonces, it.total);
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
        assertEq(_escrow(alice), 470e6, "alice debited");
        assertEq(_escrow(bob), 488e6, "bob debited");
        assertEq(usdc.balanceOf(address(settlement)), 958e6, "custody");
        assertEq(settlement.getIntent(idA).spent, 30e6, "alice spent");
        assertEq(settlement.getIntent(idB).spent, 12e6, "bob spent");
        assertEq(settlement.settledNonces(idA, 0), 0xe, "alice's nonces 1..3");
        assertEq(settlement.settledNonces(idB, 0), 1, "bob's nonce 0");
    }

    function test_SettleNoncesInAnyOrder() public {
        _armAndSettle(_single(idA, 0, 0x60, 2e6)); // nonces 5, 6
        _armAndSettle(_single(idA, 0, 0x03, 2e6)); // nonces 0, 1: earlier nonces still settle
        _armAndSettle(_single(idA, 0, 0x04, 1e6)); // nonce 2
        assertEq(settlement.settledNonces(idA, 0), 0x67, "union of the bitmaps");
        assertEq(settlement.getIntent(idA).spent, 5e6, "spent accumulates");
    }

    /// @dev Settling the largest nonce burns nothing: nonce 0 still settles afterwards.
    function test_SettleHighestNonceThenNonceZero() public {
        _armAndSettle(_single(idA, LAST_WINDOW, uint128(1) << 127, 1e6)); // nonce 2^40 - 1
        assertEq(settlement.settledNonces(idA, LAST_WINDOW), uint128(1) << 127, "highest nonce settled");
        _armAndSettle(_single(idA, 0, 1, 1e6)); // nonce 0
        assertEq(settlement.settledNonces(idA, 0), 1, "nonce 0 settled after it");
        assertEq(settlement.settledNonces(idA, LAST_WINDOW - 1), 0, "word neighbour untouched");
    }

    /// @dev Every nonce of storage word 0 (windows 0 and 1, nonces 0-255) settles; afterwards the word reads
    ///      full, no bit of it settles again, and the next word is untouched. Unknown intents read empty.
    function test_SettleEveryNonceOfWordZero() public {
        assertEq(settlement.settledNonces(idA, 0), 0, "registered: nothing settled");
        assertEq(settlement.settledNonces(keccak256("unknown"), 0), 0, "unknown intent reads empty");
        _armAndSettle(_single(idA, 1, type(uint128).max, 1e6));
        _armAndSettle(_single(idA, 0, type(uint128).max - 1, 1e6));
        _armAndSettle(_single(idA, 0, 1, 1e6)); // the last free bit of the word
        assertEq(settlement.settledNonces(idA, 0), type(uint128).max, "window 0 full");
        assertEq(settlement.settledNonces(idA, 1), type(uint128).max, "window 1 full");
        assertEq(settlement.settledNonces(idA, 2), 0, "word 1 untouched");
        assertEq(settlement.settledNonces(idB, 0), 0, "other intent untouched");
        _armAndExpectRevert(_single(idA, 0, 1, 1e6), ISettlement.Settlement__NonceAlreadySettled.selector);
        _armAndExpectRevert(
            _single(idA, 1, uint128(1) << 127, 1e6), ISettlement.Settlement__NonceAlreadySettled.selector
        );
        _armAndSettle(_single(idA, 2, 1, 1e6));
        assertEq(settlement.settledNonces(idA, 2), 1, "word 1 settles");
    }

    function test_SettleTwoWindowsOfOneIntent() public {
        ISettlement.Batch memory batch = _batch(3, 1);
        batch.intents[0] = ISettlement.IntentSettlement(idA, 0, uint128(1) << 127, 1e6); // nonce 127
        batch.intents[1] = ISettlement.IntentSettlement(idA, 1, 3, 2e6); // nonces 128, 129
        batch.intents[2] = ISettlement.IntentSettlement(idA, 9, 1, 3e6); // nonce 1152
        batch.payouts[0] = ISettlement.Payout(carol, 6e6);
        uint256[8] memory proof = _proof(3);
        _arm(proof, batch);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit BatchSettled(processor, address(usdc), uint64(block.timestamp), 4, 6e6);
        _settle(proof, batch);

        assertEq(settlement.settledNonces(idA, 0), uint128(1) << 127, "window 0 (low half of word 0)");
        assertEq(settlement.settledNonces(idA, 1), 3, "window 1 (high half of word 0)");
        assertEq(settlement.settledNonces(idA, 9), 1, "window 9");
        assertEq(settlement.settledNonces(idA, 8), 0, "window 8 untouched");
        assertEq(settlement.getIntent(idA).spent, 6e6, "spent over all windows");
        assertEq(_escrow(alice), 494e6, "debited once per slot");
    }

    function test_PublicInputsMatchProtocol() public view {
        ISettlement.Batch memory batch = _pair(30e6, 12e6, 25e6);
        uint256[] memory got = settlement.publicInputs(batch);
        uint256[] memory want = _expectedPublicInputs(batch);
        assertEq(got.length, 12, "K = 1 + 2I + P");
        for (uint256 i; i < want.length; ++i) {
            assertEq(got[i], want[i], "public input word");
        }
        uint256 slotA = batch.intents[0].intentId == idA ? 0 : 1;
        assertEq(got[0], block.timestamp, "timeRef");
        assertEq(got[1 + slotA], settlement.getIntent(idA).commitment, "commitment slot");
        assertEq(got[3], 0, "unused commitment slot");
        assertEq(got[1 + 4 + 3], 0, "unused intent word");
        assertEq(got[1 + 8 + 2], 0, "unused payee word");
        uint256 word = got[1 + 4 + slotA];
        assertEq(word & (2 ** 33 - 1), 0, "window");
        assertEq((word >> 33) & (2 ** 128 - 1), 0xe, "nonces");
        assertEq(word >> 161, 30e6, "total");
        assertEq(got[9] & (2 ** 160 - 1), uint256(uint160(carol)), "payee");
        assertEq(got[9] >> 160, 25e6, "amount");
    }

    function test_PublicInputsPackLargestFields() public view {
        ISettlement.Batch memory batch = _single(idA, LAST_WINDOW, type(uint128).max, uint96(2 ** 88 - 1));
        uint256 word = settlement.publicInputs(batch)[1 + slotsI];
        assertEq(word, _expectedPublicInputs(batch)[1 + slotsI], "matches PROTOCOL.md section 5");
        assertEq(word & (2 ** 33 - 1), LAST_WINDOW, "window does not bleed into nonces");
        assertEq((word >> 33) & (2 ** 128 - 1), type(uint128).max, "nonces do not bleed into total");
        assertEq(word >> 161, 2 ** 88 - 1, "total");
        assertLe(word, FIELD_MODULUS - 1, "fits the field");
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

    function test_RevertIf_TamperedNonces() public {
        ISettlement.Batch memory batch = _single(idA, 0, 0x3, 2e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        batch.intents[0].nonces = 0x7; // claim a third nonce for the same total
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, batch);

        batch.intents[0].nonces = 0x3;
        batch.intents[0].window = 1; // or the same bits of another window
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

    /// @dev A proof over intent X's commitment does not settle the same mandates as intent Y, even with the
    ///      same payer, session key and terms: the intent id is inside the commitment.
    function test_RevertIf_MandateSettledAsOtherIntent() public {
        ISettlement.Intent memory intentX = _intent(alice, KEY_A);
        intentX.salt = keccak256("X");
        bytes32 idX = _register(aliceKey, intentX);

        ISettlement.Batch memory asX = _single(idX, 0, 1, 1e6);
        ISettlement.Batch memory asA = _single(idA, 0, 1, 1e6);
        uint256[] memory pubX = settlement.publicInputs(asX);
        uint256[] memory pubA = settlement.publicInputs(asA);
        assertTrue(pubX[1] != pubA[1], "commitments differ");
        for (uint256 i = 2; i < pubX.length; ++i) {
            assertEq(pubX[i], pubA[i], "every other word is equal");
        }

        uint256[8] memory proof = _proof(1);
        _arm(proof, asX);
        vm.expectRevert(ISettlement.Settlement__InvalidProof.selector);
        _settle(proof, asA);
        assertEq(settlement.settledNonces(idA, 0), 0, "A untouched");

        _settle(proof, asX); // the proof is good for X
        assertEq(settlement.settledNonces(idX, 0), 1, "X settled");
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
        _armAndSettle(batch);
        // Even with a proof the verifier accepts, the nonces are spent.
        _armAndExpectRevert(batch, ISettlement.Settlement__NonceAlreadySettled.selector);
    }

    function test_RevertIf_NonceOverlapsLaterBatch() public {
        _armAndSettle(_single(idA, 0, 0x3, 2e6)); // nonces 0, 1
        _armAndExpectRevert(_single(idA, 0, 0x6, 2e6), ISettlement.Settlement__NonceAlreadySettled.selector);
        _armAndSettle(_single(idA, 0, 0xc, 2e6)); // nonces 2, 3 are fresh
        assertEq(settlement.settledNonces(idA, 0), 0xf, "nonces 0..3");
    }

    function test_RevertIf_NonceOutOfRange() public {
        _armAndExpectRevert(_single(idA, LAST_WINDOW + 1, 1, 1e6), ISettlement.Settlement__NonceOutOfRange.selector);
        _armAndExpectRevert(_single(idA, type(uint64).max, 1, 1e6), ISettlement.Settlement__NonceOutOfRange.selector);
    }

    function test_RevertIf_ZeroCount() public {
        _armAndExpectRevert(_single(idA, 0, 0, 1e6), ISettlement.Settlement__ZeroCount.selector);
    }

    function test_RevertIf_UnsortedIntentsEqualWindow() public {
        ISettlement.Batch memory batch = _batch(2, 1);
        batch.intents[0] = ISettlement.IntentSettlement(idA, 3, 0x1, 1e6);
        batch.intents[1] = ISettlement.IntentSettlement(idA, 3, 0x2, 1e6); // disjoint bits, same window
        batch.payouts[0] = ISettlement.Payout(carol, 2e6);
        _armAndExpectRevert(batch, ISettlement.Settlement__UnsortedIntents.selector);

        batch.intents[1] = batch.intents[0]; // or the very same slot twice
        _armAndExpectRevert(batch, ISettlement.Settlement__UnsortedIntents.selector);
    }

    function test_RevertIf_UnsortedIntentsDescendingWindow() public {
        ISettlement.Batch memory batch = _batch(2, 1);
        batch.intents[0] = ISettlement.IntentSettlement(idA, 4, 1, 1e6);
        batch.intents[1] = ISettlement.IntentSettlement(idA, 3, 1, 1e6);
        batch.payouts[0] = ISettlement.Payout(carol, 2e6);
        _armAndExpectRevert(batch, ISettlement.Settlement__UnsortedIntents.selector);
    }

    function test_RevertIf_UnsortedIntentsDescendingIds() public {
        ISettlement.Batch memory batch = _pair(1e6, 1e6, 1e6);
        (batch.intents[0], batch.intents[1]) = (batch.intents[1], batch.intents[0]);
        _armAndExpectRevert(batch, ISettlement.Settlement__UnsortedIntents.selector);
    }

    /// @dev A time reference exactly settlementWindow old is too old; one second younger settles.
    function test_RevertIf_TimeRefTooOld() public {
        vm.warp(START + 2 * WINDOW);
        ISettlement.Batch memory batch = _single(idA, 0, 1, 1e6);
        batch.timeRef = START + WINDOW - 1;
        _armAndExpectRevert(batch, ISettlement.Settlement__TimeRefTooOld.selector);
        batch.timeRef = START + WINDOW; // exactly one window old
        _armAndExpectRevert(batch, ISettlement.Settlement__TimeRefTooOld.selector);

        batch.timeRef = START + WINDOW + 1; // the oldest accepted
        _armAndSettle(batch);
        assertEq(usdc.balanceOf(carol), 1e6, "settled at the boundary");
    }

    /// @dev Served at t, a mandate settles up to t + W - 1 and not at t + W, whatever ends it: time
    ///      reference age, revocation or withdrawn consent all close at the same second.
    function test_SettlementWindowClosesAtTheSameSecondForEveryCause() public {
        ISettlement.Batch memory served = _single(idA, 0, 1, 1e6); // served at START, timeRef START
        ISettlement.Intent memory other = _intent(bob, 4100);
        bytes32 idOther = _register(bobKey, other);
        ISettlement.Batch memory servedOther = _single(idOther, 0, 1, 1e6);
        vm.prank(alice);
        settlement.revokeIntent(idA); // revoked at START: settleable until START + W - 1
        vm.prank(bob);
        settlement.setProcessor(processor, false); // consent lapses at START + W

        vm.warp(START + WINDOW);
        _armAndExpectRevert(served, ISettlement.Settlement__TimeRefTooOld.selector);
        _armAndExpectRevert(servedOther, ISettlement.Settlement__TimeRefTooOld.selector);
        served.timeRef = servedOther.timeRef = START + 1; // a fresher timeRef does not reopen them
        _armAndExpectRevert(served, ISettlement.Settlement__IntentRevoked.selector);
        _armAndExpectRevert(servedOther, ISettlement.Settlement__UnauthorizedProcessor.selector);

        vm.warp(START + WINDOW - 1);
        served.timeRef = servedOther.timeRef = START;
        _armAndSettle(served);
        _armAndSettle(servedOther);
        assertEq(usdc.balanceOf(carol), 2e6, "both settled on the window's last second");
    }

    function test_RevertIf_TimeRefInFuture() public {
        ISettlement.Batch memory batch = _single(idA, 0, 1, 1e6);
        batch.timeRef = uint64(block.timestamp + 1);
        _armAndExpectRevert(batch, ISettlement.Settlement__TimeRefInFuture.selector);
    }

    function test_RevertIf_UnauthorizedProcessor() public {
        ISettlement.Batch memory batch = _single(idA, 0, 1, 1e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        vm.expectRevert(ISettlement.Settlement__UnauthorizedProcessor.selector);
        vm.prank(makeAddr("stranger"));
        settlement.settleBatch(proof, batch);

        // erin names the processor in her intent but never consented to it.
        (address payer, uint256 key) = makeAddrAndKey("erin");
        _fund(payer, 10e6);
        bytes32 id = _register(key, _intent(payer, 4000));
        _armAndExpectRevert(_single(id, 0, 1, 1e6), ISettlement.Settlement__UnauthorizedProcessor.selector);
    }

    /// @dev The guarantee: a de-authorised processor still settles what it served for settlementWindow.
    function test_SettleInsideDeauthorisationWindow() public {
        ISettlement.Batch memory served = _single(idA, 0, 1, 1e6); // served at START
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        vm.warp(START + WINDOW - 1);
        _armAndSettle(served);
        assertEq(usdc.balanceOf(carol), 1e6, "settled after de-authorisation");
    }

    function test_RevertIf_UnauthorizedProcessorAfterDeauthorisationWindow() public {
        vm.prank(alice);
        settlement.setProcessor(processor, false);
        vm.warp(START + WINDOW);
        ISettlement.Batch memory batch = _single(idA, 0, 1, 1e6);
        _armAndExpectRevert(batch, ISettlement.Settlement__UnauthorizedProcessor.selector);
        batch.timeRef = START + 1; // the oldest timeRef still in the window does not help
        _armAndExpectRevert(batch, ISettlement.Settlement__UnauthorizedProcessor.selector);
        batch.timeRef = START; // and one from the de-authorisation's own second is too old anyway
        _armAndExpectRevert(batch, ISettlement.Settlement__TimeRefTooOld.selector);
    }

    function test_RevertIf_ProcessorNotNamedByIntent() public {
        address other = makeAddr("other processor");
        ISettlement.Intent memory intent = _intent(alice, 4001);
        intent.processor = other;
        bytes32 id = _register(aliceKey, intent);
        // The payer authorised `processor`, but this intent names only `other`.
        _armAndExpectRevert(_single(id, 0, 1, 1e6), ISettlement.Settlement__UnauthorizedProcessor.selector);

        // `other` is named but has no consent yet.
        ISettlement.Batch memory batch = _single(id, 0, 1, 1e6);
        uint256[8] memory proof = _proof(1);
        _arm(proof, batch);
        vm.expectRevert(ISettlement.Settlement__UnauthorizedProcessor.selector);
        vm.prank(other);
        settlement.settleBatch(proof, batch);

        // Named and consented, but alice's escrow is all with `processor`: nothing for `other` to debit.
        vm.prank(alice);
        settlement.setProcessor(other, true);
        vm.expectRevert(ISettlement.Settlement__InsufficientBalance.selector);
        vm.prank(other);
        settlement.settleBatch(proof, batch);

        _fundWith(alice, other, 1e6);
        vm.prank(other);
        settlement.settleBatch(proof, batch);
        assertEq(usdc.balanceOf(carol), 1e6, "named and consented processor settles from its own account");
        assertEq(settlement.balanceOf(alice, address(usdc), other), 0, "other's account debited");
        assertEq(_escrow(alice), 500e6, "processor's account untouched");
    }

    /// @dev The attack on a shared escrow, now closed. alice funds P (500) and Q (200) and holds an intent
    ///      naming each. P's gateway serves her 500 at START against her P account. Q then settles all of
    ///      her Q account through its own intent, and tries for more. P's batch, submitted on the last
    ///      second of its window, settles in full; Q never reaches the P account.
    function test_OtherProcessorCannotSpendServedEscrow() public {
        _fundWith(alice, procQ, 200e6);
        vm.prank(alice);
        settlement.setProcessor(procQ, true);
        ISettlement.Intent memory intentQ = _intentQ(4200);
        intentQ.maxAmount = 10_000e6; // the budget is no obstacle: only escrow is
        bytes32 idQ = _register(aliceKey, intentQ);

        ISettlement.Batch memory servedByP = _single(idA, 0, 0xff, 500e6); // all of alice's P account

        vm.warp(START + 10 minutes);
        // Q cannot settle even one unit beyond its account, though alice holds 700 in all.
        _armAndExpectRevertAs(procQ, _single(idQ, 0, 1, 700e6), ISettlement.Settlement__InsufficientBalance.selector);
        _armAndExpectRevertAs(
            procQ, _single(idQ, 0, 1, 200e6 + 1), ISettlement.Settlement__InsufficientBalance.selector
        );
        _armAndSettleAs(procQ, _single(idQ, 0, 1, 200e6)); // drains the Q account
        assertEq(settlement.balanceOf(alice, address(usdc), procQ), 0, "Q account drained");
        assertEq(_escrow(alice), 500e6, "P account untouched by Q");
        _armAndExpectRevertAs(procQ, _single(idQ, 0, 2, 1), ISettlement.Settlement__InsufficientBalance.selector);
        // Nor through P's intent: Q is not its processor.
        _armAndExpectRevertAs(procQ, _single(idA, 1, 1, 1e6), ISettlement.Settlement__UnauthorizedProcessor.selector);

        // alice asks for her P escrow back after being served: it waits out the window, still debitable.
        vm.prank(alice);
        settlement.requestWithdrawal(address(usdc), processor, 500e6);

        vm.warp(START + WINDOW - 1);
        _armAndSettle(servedByP);
        assertEq(usdc.balanceOf(carol), 700e6, "P's payee paid in full, and Q's");
        assertEq(_escrow(alice), 0, "P account debited by P only");
        assertEq(settlement.getIntent(idA).spent, 500e6, "P intent spent");
        assertEq(settlement.getIntent(idQ).spent, 200e6, "Q intent spent");
        assertEq(usdc.balanceOf(address(settlement)), 500e6, "custody: bob's P account");
    }

    /// @dev Whatever alice holds with P, Q settles exactly what her Q account covers and P's account never
    ///      moves; P then settles against its account as if Q did not exist.
    function testFuzz_ProcessorDebitsOnlyItsOwnAccount(uint256 inQ, uint256 totalQ, uint256 totalP) public {
        inQ = bound(inQ, 1, 1e12);
        totalQ = bound(totalQ, 1, 2 * inQ);
        totalP = bound(totalP, 1, 1_000e6);
        _fundWith(alice, procQ, inQ);
        vm.prank(alice);
        settlement.setProcessor(procQ, true);
        ISettlement.Intent memory intentQ = _intentQ(4300);
        intentQ.maxAmount = type(uint96).max;
        bytes32 idQ = _register(aliceKey, intentQ);

        ISettlement.Batch memory q = _single(idQ, 0, 1, uint96(totalQ));
        if (totalQ > inQ) {
            _armAndExpectRevertAs(procQ, q, ISettlement.Settlement__InsufficientBalance.selector);
        } else {
            _armAndSettleAs(procQ, q);
        }
        uint256 leftQ = totalQ > inQ ? inQ : inQ - totalQ;
        assertEq(settlement.balanceOf(alice, address(usdc), procQ), leftQ, "Q account");
        assertEq(_escrow(alice), 500e6, "P account untouched");

        ISettlement.Batch memory p = _single(idA, 0, 1, uint96(totalP));
        if (totalP > 500e6) {
            _armAndExpectRevert(p, ISettlement.Settlement__InsufficientBalance.selector);
        } else {
            _armAndSettle(p);
            assertEq(_escrow(alice), 500e6 - totalP, "P account debited by P");
        }
        assertEq(settlement.balanceOf(alice, address(usdc), procQ), leftQ, "Q account untouched by P");
    }

    function test_RevertIf_IntentExpired() public {
        vm.warp(START + 30 days);
        _armAndExpectRevert(_single(idA, 0, 1, 1e6), ISettlement.Settlement__IntentExpired.selector);
    }

    /// @dev An intent that expires after serving still settles, with the serve time as time reference.
    function test_SettleServedBeforeExpiry() public {
        ISettlement.Intent memory intent = _intent(alice, 4004);
        intent.validBefore = START + 10 minutes;
        bytes32 id = _register(aliceKey, intent);
        ISettlement.Batch memory served = _single(id, 0, 1, 1e6);
        served.timeRef = START + 10 minutes - 1; // the last valid second
        vm.warp(START + 10 minutes - 1 + WINDOW - 1); // the window's last second
        _armAndSettle(served);
        assertEq(settlement.getIntent(id).spent, 1e6, "settled after validBefore");
    }

    function test_RevertIf_IntentNotYetValid() public {
        ISettlement.Intent memory intent = _intent(alice, 4002);
        intent.validAfter = START + 1;
        bytes32 id = _register(aliceKey, intent);
        _armAndExpectRevert(_single(id, 0, 1, 1e6), ISettlement.Settlement__IntentNotYetValid.selector);
    }

    /// @dev The guarantee: a revoked intent still settles what was served for settlementWindow.
    function test_SettleInsideRevocationWindow() public {
        ISettlement.Batch memory served = _single(idA, 0, 1, 1e6); // served at START
        vm.prank(alice);
        settlement.revokeIntent(idA);
        vm.warp(START + WINDOW - 1);
        _armAndSettle(served);
        assertEq(usdc.balanceOf(carol), 1e6, "settled after revocation");
        assertEq(settlement.getIntent(idA).spent, 1e6, "spent");
    }

    function test_RevertIf_IntentRevokedAfterWindow() public {
        ISettlement.Batch memory served = _single(idA, 0, 1, 1e6);
        served.timeRef = START + 1; // served after the revocation: a timeRef young enough does not help
        vm.prank(alice);
        settlement.revokeIntent(idA);
        vm.warp(START + WINDOW);
        _armAndExpectRevert(served, ISettlement.Settlement__IntentRevoked.selector);
        served.timeRef = START + WINDOW; // nor does the freshest
        _armAndExpectRevert(served, ISettlement.Settlement__IntentRevoked.selector);
    }

    function test_RevertIf_Overdraft() public {
        ISettlement.Intent memory intent = _intent(alice, 4003);
        intent.maxAmount = 10_000e6;
        bytes32 id = _register(aliceKey, intent);
        _armAndExpectRevert(_single(id, 0, 1, 500e6 + 1), ISettlement.Settlement__InsufficientBalance.selector);
    }

    function test_RevertIf_BudgetExceeded() public {
        _armAndSettle(_single(idA, 0, 1, 400e6));
        _fund(alice, 1_000e6);
        _armAndExpectRevert(_single(idA, 0, 2, 600e6 + 1), ISettlement.Settlement__IntentBudgetExceeded.selector);
        _armAndSettle(_single(idA, 0, 2, 600e6)); // exactly the budget
        assertEq(settlement.getIntent(idA).spent, 1_000e6, "budget used up");
    }

    function test_RevertIf_MalformedBatch() public {
        _armAndExpectRevert(_batch(0, 0), ISettlement.Settlement__EmptyBatch.selector);

        ISettlement.Batch memory tooMany = _batch(5, 0);
        _armAndExpectRevert(tooMany, ISettlement.Settlement__BatchTooLarge.selector);
        tooMany = _batch(1, 4);
        _armAndExpectRevert(tooMany, ISettlement.Settlement__BatchTooLarge.selector);

        _armAndExpectRevert(_single(keccak256("nope"), 0, 1, 1e6), ISettlement.Settlement__UnknownIntent.selector);

        ISettlement.Batch memory otherAsset = _single(idA, 0, 1, 1e6);
        otherAsset.asset = address(verifier);
        _armAndExpectRevert(otherAsset, ISettlement.Settlement__AssetMismatch.selector);

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

    function testFuzz_SettleSplitsAmounts(uint256 totalA, uint256 totalB, uint256 toCarol, uint64 w, uint128 nonces)
        public
    {
        totalA = bound(totalA, 0, 500e6);
        totalB = bound(totalB, 0, 500e6);
        toCarol = bound(toCarol, 0, totalA + totalB);
        w = uint64(bound(w, 0, LAST_WINDOW));
        nonces = uint128(bound(nonces, 1, type(uint128).max));
        ISettlement.Batch memory batch = _pair(uint96(totalA), uint96(totalB), uint96(toCarol));
        (batch.intents[0].window, batch.intents[0].nonces) = (w, nonces);
        _armAndSettle(batch);

        assertEq(usdc.balanceOf(carol), toCarol, "carol");
        assertEq(usdc.balanceOf(dave), totalA + totalB - toCarol, "dave");
        assertEq(_escrow(alice) + _escrow(bob) + totalA + totalB, 1_000e6, "conservation");
        assertEq(settlement.settledNonces(batch.intents[0].intentId, w), nonces, "bitmap stored");
    }

    function testFuzz_RevertIf_OverBudget(uint256 maxAmount, uint256 total) public {
        maxAmount = bound(maxAmount, 1, 400e6);
        total = bound(total, maxAmount + 1, 500e6);
        ISettlement.Intent memory intent = _intent(alice, 5005);
        intent.maxAmount = maxAmount;
        bytes32 id = _register(aliceKey, intent);
        _armAndExpectRevert(_single(id, 0, 1, uint96(total)), ISettlement.Settlement__IntentBudgetExceeded.selector);
    }

    /// @dev BatchSettled counts every set bit of every slot's bitmap.
    function testFuzz_MandatesIsPopcount(uint128 noncesA, uint128 noncesB, uint64 w) public {
        noncesA = uint128(bound(noncesA, 1, type(uint128).max));
        noncesB = uint128(bound(noncesB, 1, type(uint128).max));
        w = uint64(bound(w, 0, LAST_WINDOW - 1));
        ISettlement.Batch memory batch = _batch(3, 1);
        ISettlement.IntentSettlement memory a0 = ISettlement.IntentSettlement(idA, w, noncesA, 1e6);
        ISettlement.IntentSettlement memory a1 = ISettlement.IntentSettlement(idA, w + 1, noncesB, 2e6);
        ISettlement.IntentSettlement memory b = ISettlement.IntentSettlement(idB, w, noncesB, 3e6);
        (batch.intents[0], batch.intents[1], batch.intents[2]) = idA < idB ? (a0, a1, b) : (b, a0, a1);
        batch.payouts[0] = ISettlement.Payout(carol, 6e6);

        uint256 mandates = _popcount(noncesA) + 2 * _popcount(noncesB);
        uint256[8] memory proof = _proof(noncesA);
        _arm(proof, batch);
        vm.expectEmit(true, true, false, true, address(settlement));
        emit BatchSettled(processor, address(usdc), uint64(block.timestamp), mandates, 6e6);
        _settle(proof, batch);
    }

    /// @dev Disjoint bitmaps settle in any order and the stored bitmap is their union.
    function testFuzz_SettledNoncesIsUnionOfDisjointBatches(uint128 a, uint128 b, uint128 c, uint64 w) public {
        w = uint64(bound(w, 0, LAST_WINDOW));
        uint128[3] memory parts = [a, b & ~a, c & ~(a | b)];
        uint128 union;
        for (uint256 i; i < 3; ++i) {
            if (parts[i] == 0) continue;
            _armAndSettle(_single(idA, w, parts[i], 1));
            union |= parts[i];
            assertEq(settlement.settledNonces(idA, w), union, "union so far");
        }
        assertEq(settlement.settledNonces(idA, w), a | b | c, "a | b | c");
        assertEq(settlement.settledNonces(idA, w ^ 1), 0, "the other half of the word is untouched");
        assertEq(settlement.settledNonces(idB, w), 0, "other intents untouched");
    }

    function testFuzz_RevertIf_NonceOverlap(uint128 first, uint128 second, uint64 w) public {
        first = uint128(bound(first, 1, type(uint128).max));
        w = uint64(bound(w, 0, LAST_WINDOW));
        second |= first & (~first + 1); // share at least the lowest bit of `first`
        _armAndSettle(_single(idA, w, first, 1e6));
        _armAndExpectRevert(_single(idA, w, second, 1e6), ISettlement.Settlement__NonceAlreadySettled.selector);
        assertEq(settlement.settledNonces(idA, w), first, "unchanged");
    }
}

/// @notice Gas of a full-width batch (8 intents, 4 payees) with the test verifier; add the real verifier's
///         cost (~221k + ~6.2k per public input for snarkjs) for an on-chain estimate.
/// @dev Everything is set up in a previous call so the measured call sees cold storage, as on chain.
abstract contract SettlementGasBase is SettlementBase {
    ISettlement.Batch internal first;
    ISettlement.Batch internal next;

    function setUp() public virtual {
        _deploy(8, 4, 1 days, 1 hours);
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
        first.asset = next.asset = address(usdc);
        first.timeRef = next.timeRef = uint64(block.timestamp);
        for (uint256 i; i < 8; ++i) {
            first.intents.push(ISettlement.IntentSettlement(ids[i], 0, 0xff, 4e6));
            next.intents.push(ISettlement.IntentSettlement(ids[i], 0, 0xff00, 4e6));
        }
        for (uint256 k; k < 4; ++k) {
            address payee = makeAddr(string(abi.encodePacked("payee", bytes1(uint8(65 + k)))));
            usdc.mint(payee, 1); // payees usually hold a balance already
            first.payouts.push(ISettlement.Payout(payee, 8e6));
            next.payouts.push(ISettlement.Payout(payee, 8e6));
        }
    }

    function _measure(ISettlement.Batch memory b, uint256 seed) internal returns (uint256 used) {
        uint256[8] memory proof = _proof(seed);
        vm.prank(processor);
        uint256 before = gasleft();
        settlement.settleBatch(proof, b);
        used = before - gasleft();
    }

    event log_named_uint(string key, uint256 val);
}

/// @notice Each intent's first batch. Registration pre-set nonce word 0 (stored inverted), so the batch
///         rewrites non-zero slots only and costs what a later batch costs.
contract SettlementGasTest is SettlementGasBase {
    function setUp() public override {
        super.setUp();
        _arm(_proof(1), first);
    }

    function test_SettleBatchGas8x4FirstBatch() public {
        uint256 used = _measure(first, 1);
        emit log_named_uint("gas: settleBatch 8 intents / 4 payees, first batch, excluding verifier", used);
        assertLe(used, 360_000, "settle overhead budget, first batch of each intent");
    }
}

/// @notice A later batch in the same nonce words (two 128-nonce windows share a word): the steady state.
contract SettlementGasSteadyStateTest is SettlementGasBase {
    function setUp() public override {
        super.setUp();
        _arm(_proof(1), first);
        _measure(first, 1);
        _arm(_proof(2), next);
    }

    function test_SettleBatchGas8x4SameNonceWords() public {
        uint256 used = _measure(next, 2);
        emit log_named_uint("gas: settleBatch 8 intents / 4 payees, existing nonce words, excluding verifier", used);
        assertLe(used, 360_000, "settle overhead budget, steady state");
    }
}
