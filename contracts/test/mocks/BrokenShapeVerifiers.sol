// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @notice A verifier whose batchShape() exists but reverts.
contract RevertingShapeVerifier {
    error NoShape();

    function batchShape() external pure returns (uint256, uint256, uint256, uint256, bool) {
        revert NoShape();
    }
}

/// @notice A contract that answers every call, batchShape() included, with `answer` (e.g. nothing, or one
///         word): the call succeeds but its return data is not five words.
contract AnsweringFallback {
    bytes private _answer;

    constructor(bytes memory answer) {
        _answer = answer;
    }

    fallback(bytes calldata) external returns (bytes memory) {
        return _answer;
    }
}
