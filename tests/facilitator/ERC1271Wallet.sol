// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title ERC1271Wallet
/// @notice Test-only smart wallet: holds tokens and accepts, through ERC-1271, any 65-byte ECDSA
///         signature of its owner over the exact digest (no EIP-191 prefix). Compiled by the
///         facilitator tests at run time; never deploy it as a wallet.
contract ERC1271Wallet {
    /// @dev ERC-1271 magic value, `bytes4(keccak256("isValidSignature(bytes32,bytes)"))`.
    bytes4 internal constant MAGIC_VALUE = 0x1626ba7e;
    /// @dev Upper bound of a non-malleable `s` (secp256k1 order / 2), as OpenZeppelin's ECDSA.
    uint256 internal constant MAX_S = 0x7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0;

    address public immutable owner;

    /// @param owner_ The EOA whose signatures this wallet accepts.
    constructor(address owner_) {
        owner = owner_;
    }

    /// @notice ERC-1271: `MAGIC_VALUE` when `signature` is the owner's over `hash`, else `0xffffffff`.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        if (signature.length != 65) return 0xffffffff;
        bytes32 r = bytes32(signature[0:32]);
        bytes32 s = bytes32(signature[32:64]);
        uint8 v = uint8(signature[64]);
        if (uint256(s) > MAX_S) return 0xffffffff;
        address signer = ecrecover(hash, v, r, s);
        return signer != address(0) && signer == owner ? MAGIC_VALUE : bytes4(0xffffffff);
    }
}
