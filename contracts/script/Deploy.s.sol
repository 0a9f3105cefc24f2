// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../src/MockUSDC.sol";
import {Settlement} from "../src/Settlement.sol";
import {Vm} from "../test/utils/Vm.sol";

/// @title Deploy
/// @notice Deploys MockUSDC and a Settlement bound to an already deployed Groth16 verifier.
/// @dev The slot counts come from the verifier's batchShape(). forge deploys and links the PoseidonT5
///      library Settlement uses.
///      Env: VERIFIER (address of a generated verifier with batchShape(); anything else reverts
///      Settlement__InvalidConfig), WITHDRAWAL_DELAY (seconds, default 86400), SETTLEMENT_WINDOW (seconds,
///      default 3600; must not exceed WITHDRAWAL_DELAY).
///      `forge script contracts/script/Deploy.s.sol --rpc-url $RPC --private-key $KEY --broadcast`
contract Deploy {
    Vm internal constant vm = Vm(address(uint160(uint256(keccak256("hevm cheat code")))));

    function run() external returns (MockUSDC token, Settlement settlement) {
        address verifier = vm.envAddress("VERIFIER");
        uint64 withdrawalDelay = uint64(vm.envOr("WITHDRAWAL_DELAY", uint256(1 days)));
        uint64 settlementWindow = uint64(vm.envOr("SETTLEMENT_WINDOW", uint256(1 hours)));

        vm.startBroadcast();
        token = new MockUSDC();
        settlement = new Settlement(verifier, withdrawalDelay, settlementWindow);
        vm.stopBroadcast();
    }
}
