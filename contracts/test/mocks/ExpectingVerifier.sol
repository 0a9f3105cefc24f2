// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title ExpectingVerifier
/// @notice Test double for the snarkjs-style Groth16 verifier. It accepts exactly one call: the expected
///         `verifyProof` selector followed by proof and public-input words whose keccak256 the test armed.
///         A forged proof word or a tampered public input therefore reads as an invalid proof, and the
///         selector check pins the Settlement's `uint256[K]` signature.
/// @dev The real generated verifier is exercised end to end from Python.
contract ExpectingVerifier {
    bytes4 public immutable SELECTOR;
    bytes32 public expectedHash;

    /// @param publicInputCount K = 1 + 2I + P.
    constructor(uint256 publicInputCount) {
        SELECTOR = bytes4(
            keccak256(
                abi.encodePacked(
                    "verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[", _decimal(publicInputCount), "])"
                )
            )
        );
    }

    /// @notice Arms the verifier with keccak256(proof words ++ public-input words).
    function expect(bytes32 wordsHash) external {
        expectedHash = wordsHash;
    }

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
