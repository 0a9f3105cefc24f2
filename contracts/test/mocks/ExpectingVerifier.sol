// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IBatchVerifier} from "../../src/interfaces/IBatchVerifier.sol";

/// @title ExpectingVerifier
/// @notice Test double for the generated Groth16 verifier of Batch(N, I, P, D). It reports the shape it was
///         built with (IBatchVerifier) and accepts exactly the call the test armed: the expected
///         `verifyProof` selector followed by proof and public-input words whose keccak256 the test set.
///         A forged proof word or a tampered public input therefore reads as an invalid proof, and the
///         selector check pins the Settlement's `uint256[K]` signature, K = 1 + 2I + P.
/// @dev The real generated verifier is exercised end to end from Python.
contract ExpectingVerifier is IBatchVerifier {
    bytes4 public immutable SELECTOR;
    uint256 private immutable _N;
    uint256 private immutable _I;
    uint256 private immutable _P;
    uint256 private immutable _DEPTH;
    bool private immutable _DEVELOPMENT_SETUP;
    bytes32 public expectedHash;

    /// @param n Mandate slots N.
    /// @param i Intent slots I.
    /// @param p Payee slots P.
    /// @param depth Payee allowlist tree depth D.
    /// @param developmentSetup Whether to claim keys from the single-party development setup.
    constructor(uint256 n, uint256 i, uint256 p, uint256 depth, bool developmentSetup) {
        (_N, _I, _P, _DEPTH, _DEVELOPMENT_SETUP) = (n, i, p, depth, developmentSetup);
        SELECTOR = bytes4(
            keccak256(
                abi.encodePacked(
                    "verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[", _decimal(1 + 2 * i + p), "])"
                )
            )
        );
    }

    /// @inheritdoc IBatchVerifier
    function batchShape() external view returns (uint256, uint256, uint256, uint256, bool) {
        return (_N, _I, _P, _DEPTH, _DEVELOPMENT_SETUP);
    }

    /// @notice Arms the verifier with keccak256(proof words ++ public-input words).
    function expect(bytes32 wordsHash) external {
        expectedHash = wordsHash;
    }

    /// @dev Any other call is a verifyProof attempt: true only for the armed selector and words.
    fallback(bytes calldata data) external returns (bytes memory) {
        bool ok = data.length >= 4 && bytes4(data[:4]) == SELECTOR && keccak256(data[4:]) == expectedHash;
        return abi.encode(ok);
    }

    function _decimal(uint256 value) private pure returns (string memory) {
        if (value == 0) return "0";
        bytes memory digits;
        while (value != 0) {
            digits = abi.encodePacked(bytes1(uint8(48 + value % 10)), digits);
            value /= 10;
        }
        return string(digits);
    }
}
