// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../src/MockUSDC.sol";
import {Settlement} from "../src/Settlement.sol";
import {Vm} from "../test/utils/Vm.sol";

/// @title Deploy
/// @notice Deploys MockUSDC and a Settlement bound to an already deployed Groth16 verifier.
/// @dev Env: VERIFIER (address), INTENT_SLOTS, PAYEE_SLOTS, WITHDRAWAL_DELAY (seconds, default 86400).
///      `forge script contracts/script/Deploy.s.sol --rpc-url $RPC --private-key $KEY --broadcast`
contract Deploy {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    function run() external returns (MockUSDC token, Settlement settlement) {
        address verifier = vm.envAddress("VERIFIER");
        uint256 intentSlots = vm.envUint("INTENT_SLOTS");
        uint256 payeeSlots = vm.envUint("PAYEE_SLOTS");
        uint64 withdrawalDelay = uint64(vm.envOr("WITHDRAWAL_DELAY", uint256(1 days)));

        vm.startBroadcast();
        token = new MockUSDC();
        settlement = new Settlement(verifier, intentSlots, payeeSlots, withdrawalDelay);
        vm.stopBroadcast();
    }
}
