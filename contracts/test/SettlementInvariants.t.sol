// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../src/MockUSDC.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {ExpectingVerifier} from "./mocks/ExpectingVerifier.sol";
import {SettlementBase} from "./utils/SettlementBase.sol";
import {Test} from "./utils/Test.sol";

/// @notice Drives deposits, withdrawals and settlements from a few payers and keeps ghost totals.
/// @dev The handler is the processor every payer authorised; it arms the test verifier with the
///      contract's own public inputs (their encoding is pinned by the unit tests).
contract SettlementHandler is Test {
    Settlement internal immutable settlement;
    MockUSDC internal immutable usdc;
    ExpectingVerifier internal immutable verifier;

    address[] public payers;
    bytes32[] public intentIds;
    address[2] internal payees;

    uint256 public ghostDeposits;
    uint256 public ghostPayouts;
    uint256 public ghostWithdrawn;
    mapping(bytes32 => uint256) public ghostSpent;
    mapping(bytes32 => uint256) public ghostNextNonce;
    bool public nonceDecreased;
    uint256 public settlements;

    constructor(Settlement settlement_, MockUSDC usdc_, ExpectingVerifier verifier_) {
        settlement = settlement_;
        usdc = usdc_;
        verifier = verifier_;
        payees = [address(0xBEEF01), address(0xBEEF02)];
    }

    function addPayer(address payer, bytes32 intentId) external {
        payers.push(payer);
        intentIds.push(intentId);
    }

    function payerCount() external view returns (uint256) {
        return payers.length;
    }

    /// @dev After every action: no intent's nextNonce went backwards.
    modifier trackNonces() {
        _;
        for (uint256 i; i < intentIds.length; ++i) {
            uint256 next = settlement.getIntent(intentIds[i]).nextNonce;
            if (next < ghostNextNonce[intentIds[i]]) nonceDecreased = true;
            ghostNextNonce[intentIds[i]] = next;
        }
    }

    function deposit(uint256 actor, uint256 amount) external trackNonces {
        address payer = payers[actor % payers.length];
        amount = bound(amount, 1, 1e12);
        usdc.mint(payer, amount);
        vm.startPrank(payer);
        usdc.approve(address(settlement), amount);
        settlement.deposit(address(usdc), amount);
        vm.stopPrank();
        ghostDeposits += amount;
    }

    function requestWithdrawal(uint256 actor, uint256 amount) external trackNonces {
        address payer = payers[actor % payers.length];
        uint256 balance = settlement.balanceOf(payer, address(usdc));
        if (balance == 0) return;
        vm.prank(payer);
        settlement.requestWithdrawal(address(usdc), bound(amount, 1, balance));
    }

    function executeWithdrawal(uint256 actor) external trackNonces {
        address payer = payers[actor % payers.length];
        ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(payer, address(usdc));
        if (w.amount == 0) return;
        if (block.timestamp < w.readyAt) vm.warp(w.readyAt);
        vm.prank(payer);
        ghostWithdrawn += settlement.executeWithdrawal(address(usdc));
    }

    function cancelWithdrawal(uint256 actor) external trackNonces {
        address payer = payers[actor % payers.length];
        if (settlement.pendingWithdrawal(payer, address(usdc)).amount == 0) return;
        vm.prank(payer);
        settlement.cancelWithdrawal(address(usdc));
    }

    function settle(uint256 actor, uint256 amount, uint256 gap, uint256 split) external trackNonces {
        uint256 index = actor % payers.length;
        bytes32 id = intentIds[index];
        ISettlement.IntentRecord memory rec = settlement.getIntent(id);
        uint256 balance = settlement.balanceOf(payers[index], address(usdc));
        uint256 room = rec.maxAmount - rec.spent;
        uint256 max = balance < room ? balance : room;
        if (max == 0) return;
        amount = bound(amount, 1, max);
        uint256 lastNonce = uint256(rec.nextNonce) + bound(gap, 0, 3);
        split = bound(split, 0, amount);

        ISettlement.Batch memory batch;
        batch.asset = address(usdc);
        batch.timeRef = uint64(block.timestamp);
        batch.intents = new ISettlement.IntentSettlement[](1);
        batch.intents[0] = ISettlement.IntentSettlement(id, uint40(lastNonce), uint16(bound(gap, 1, 50)), uint96(amount));
        batch.payouts = new ISettlement.Payout[](2);
        batch.payouts[0] = ISettlement.Payout(payees[0], uint96(split));
        batch.payouts[1] = ISettlement.Payout(payees[1], uint96(amount - split));

        uint256[8] memory proof;
        for (uint256 i; i < 8; ++i) {
            proof[i] = uint256(keccak256(abi.encode(settlements, i)));
        }
        verifier.expect(keccak256(abi.encodePacked(proof, settlement.publicInputs(batch))));
        settlement.settleBatch(proof, batch);

        ghostPayouts += amount;
        ghostSpent[id] += amount;
        ++settlements;
    }

    function warp(uint256 seconds_) external trackNonces {
        vm.warp(block.timestamp + bound(seconds_, 0, 6 hours));
    }
}

contract SettlementInvariantTest is SettlementBase {
    SettlementHandler internal handler;

    function setUp() public {
        _deploy(2, 2, 1 days);
        handler = new SettlementHandler(settlement, usdc, verifier);
        for (uint256 i; i < 3; ++i) {
            (address payer, uint256 key) = makeAddrAndKey(string(abi.encodePacked("payer", bytes1(uint8(65 + i)))));
            vm.prank(payer);
            settlement.setProcessor(address(handler), true);
            ISettlement.Intent memory intent = _intent(payer, 7000 + i);
            intent.maxAmount = 2e12; // reachable, so the budget check is exercised
            intent.maxPerPayment = 1e12;
            intent.validBefore = START + 3650 days;
            handler.addPayer(payer, _register(key, intent));
            handler.deposit(i, 5e11); // start funded (counted in the ghost deposits)
        }

        bytes4[] memory selectors = new bytes4[](6);
        selectors[0] = SettlementHandler.deposit.selector;
        selectors[1] = SettlementHandler.requestWithdrawal.selector;
        selectors[2] = SettlementHandler.executeWithdrawal.selector;
        selectors[3] = SettlementHandler.cancelWithdrawal.selector;
        selectors[4] = SettlementHandler.settle.selector;
        selectors[5] = SettlementHandler.warp.selector;
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /// @dev Escrowed balances + payouts + withdrawals == deposits, and the contract holds every escrowed unit.
    function invariant_EscrowConservation() public view {
        uint256 escrowed;
        for (uint256 i; i < handler.payerCount(); ++i) {
            escrowed += settlement.balanceOf(handler.payers(i), address(usdc));
        }
        assertEq(
            escrowed + handler.ghostPayouts() + handler.ghostWithdrawn(), handler.ghostDeposits(), "conservation"
        );
        assertEq(usdc.balanceOf(address(settlement)), escrowed, "custody == escrow");
    }

    function invariant_SpentWithinBudget() public view {
        for (uint256 i; i < handler.payerCount(); ++i) {
            bytes32 id = handler.intentIds(i);
            ISettlement.IntentRecord memory rec = settlement.getIntent(id);
            assertLe(rec.spent, rec.maxAmount, "spent <= maxAmount");
            assertEq(rec.spent, handler.ghostSpent(id), "spent == ghost");
        }
    }

    function invariant_NoncesNeverDecrease() public view {
        assertFalse(handler.nonceDecreased(), "a nextNonce went backwards");
        for (uint256 i; i < handler.payerCount(); ++i) {
            bytes32 id = handler.intentIds(i);
            assertGe(settlement.getIntent(id).nextNonce, handler.ghostNextNonce(id), "nextNonce >= last seen");
        }
    }
}
