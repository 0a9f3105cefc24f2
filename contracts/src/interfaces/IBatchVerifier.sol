// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title IBatchVerifier
/// @notice What Settlement reads from the generated Groth16 verifier of circuits/batch.circom besides
///         verifyProof: the circuit shape its verifying key was made for, so a Settlement cannot be
///         deployed over a verifier of another shape, and whether the keys are a development setup.
interface IBatchVerifier {
    /// @return n Mandate slots N.
    /// @return i Intent slots I.
    /// @return p Payee slots P.
    /// @return depth Payee allowlist tree depth D.
    /// @return developmentSetup True when the keys come from the unsafe single-party setup.
    function batchShape() external view returns (uint256 n, uint256 i, uint256 p, uint256 depth, bool developmentSetup);
}
