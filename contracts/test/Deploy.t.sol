// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../src/MockUSDC.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {Deploy} from "../script/Deploy.s.sol";
import {ExpectingVerifier} from "./mocks/ExpectingVerifier.sol";
import {Test} from "./utils/Test.sol";

/// @notice Runs contracts/script/Deploy.s.sol against a verifier double: the Settlement takes its slot counts
///         from the verifier's batchShape() and its delays from the environment.
contract DeployScriptTest is Test {
    function test_Run() public {
        ExpectingVerifier verifier = new ExpectingVerifier(16, 4, 3, 8, true);
        vm.setEnv("VERIFIER", vm.toString(address(verifier)));
        vm.setEnv("WITHDRAWAL_DELAY", "7200");
        vm.setEnv("SETTLEMENT_WINDOW", "600");

        (MockUSDC token, Settlement settlement) = new Deploy().run();

        assertEq(settlement.verifier(), address(verifier), "verifier");
        assertEq(settlement.batchSize(), 16, "N from batchShape");
        assertEq(settlement.intentSlots(), 4, "I from batchShape");
        assertEq(settlement.payeeSlots(), 3, "P from batchShape");
        assertEq(settlement.withdrawalDelay(), 7200, "WITHDRAWAL_DELAY");
        assertEq(settlement.settlementWindow(), 600, "SETTLEMENT_WINDOW");
        assertEq(token.decimals(), 6, "MockUSDC");

        // The deployed pair works together: escrow is credited per (payer, token, processor).
        address payer = makeAddr("payer");
        address processor = makeAddr("processor");
        token.mint(payer, 5e6);
        vm.startPrank(payer);
        token.approve(address(settlement), 5e6);
        settlement.deposit(address(token), processor, 5e6);
        vm.stopPrank();
        assertEq(settlement.balanceOf(payer, address(token), processor), 5e6, "escrow with the processor");
        assertEq(settlement.balanceOf(payer, address(token), makeAddr("other")), 0, "not with another");
    }

    /// @dev VERIFIER must be a generated verifier: an address without batchShape() fails the deployment with
    ///      InvalidConfig rather than leaving a Settlement behind.
    function test_RevertIf_VerifierIsNotAVerifier() public {
        vm.setEnv("VERIFIER", vm.toString(address(new MockUSDC())));
        vm.setEnv("WITHDRAWAL_DELAY", "7200");
        vm.setEnv("SETTLEMENT_WINDOW", "600");
        Deploy script = new Deploy();
        vm.expectRevert(ISettlement.Settlement__InvalidConfig.selector);
        script.run();
    }
}
