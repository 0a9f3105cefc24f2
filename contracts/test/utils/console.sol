// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title console
/// @notice Minimal `console.log` (Foundry prints these with `-vv`); same wire format as forge-std's.
library console {
    address private constant CONSOLE = 0x000000000000000000636F6e736F6c652e6c6f67;

    function log(string memory label, uint256 value) internal view {
        _send(abi.encodeWithSignature("log(string,uint256)", label, value));
    }

    function log(string memory message) internal view {
        _send(abi.encodeWithSignature("log(string)", message));
    }

    function _send(bytes memory payload) private view {
        address target = CONSOLE;
        assembly ("memory-safe") {
            pop(staticcall(gas(), target, add(payload, 32), mload(payload), 0, 0))
        }
    }
}
