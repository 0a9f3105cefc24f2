// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC3009} from "@openzeppelin/contracts/token/ERC20/extensions/draft-ERC3009.sol";

import {MockUSDC} from "../src/MockUSDC.sol";
import {Test} from "./utils/Test.sol";
import {console} from "./utils/console.sol";

contract MockUSDCTest is Test {
    bytes32 private constant TRANSFER_TYPEHASH = keccak256(
        "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 private constant RECEIVE_TYPEHASH = keccak256(
        "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
    );
    bytes32 private constant CANCEL_TYPEHASH = keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");
    bytes32 private constant PERMIT_TYPEHASH =
        keccak256("Permit(address owner,address spender,uint256 value,uint256 nonce,uint256 deadline)");

    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    MockUSDC private usdc;
    address private alice;
    uint256 private aliceKey;
    address private bob;
    uint256 private bobKey;

    function setUp() public {
        vm.warp(1_700_000_000);
        usdc = new MockUSDC();
        (alice, aliceKey) = makeAddrAndKey("alice");
        (bob, bobKey) = makeAddrAndKey("bob");
        usdc.mint(alice, 1_000e6);
    }

    /*//////////////////////////////////////////////////////////////
                                HELPERS
    //////////////////////////////////////////////////////////////*/

    function _domainSeparator() private view returns (bytes32) {
        return keccak256(
            abi.encode(
                keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"),
                keccak256("USD Coin"),
                keccak256("2"),
                block.chainid,
                address(usdc)
            )
        );
    }

    function _digest(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", _domainSeparator(), structHash));
    }

    function _authDigest(bytes32 typehash, address to, uint256 value, uint256 after_, uint256 before_, bytes32 nonce)
        private
        view
        returns (bytes32)
    {
        return _digest(keccak256(abi.encode(typehash, alice, to, value, after_, before_, nonce)));
    }

    /*//////////////////////////////////////////////////////////////
                                METADATA
    //////////////////////////////////////////////////////////////*/

    function test_Metadata() public view {
        assertEq(usdc.name(), "USD Coin", "name");
        assertEq(usdc.symbol(), "USDC", "symbol");
        assertEq(usdc.decimals(), 6, "decimals");
        assertEq(usdc.DOMAIN_SEPARATOR(), _domainSeparator(), "domain: USD Coin / 2");
        (, string memory name, string memory version,,,,) = usdc.eip712Domain();
        assertEq(name, "USD Coin", "eip712 name");
        assertEq(version, "2", "eip712 version");
    }

    function test_MintIsOpen() public {
        vm.prank(bob);
        usdc.mint(bob, 5e6);
        assertEq(usdc.balanceOf(bob), 5e6, "minted");
    }

    /*//////////////////////////////////////////////////////////////
                                EIP-3009
    //////////////////////////////////////////////////////////////*/

    function test_TransferWithAuthorization() public {
        bytes32 nonce = keccak256("n1");
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(
            aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 10e6, block.timestamp - 1, block.timestamp + 60, nonce)
        );
        vm.expectEmit(true, true, false, false, address(usdc));
        emit AuthorizationUsed(alice, nonce);
        vm.prank(makeAddr("relayer"));
        usdc.transferWithAuthorization(alice, bob, 10e6, block.timestamp - 1, block.timestamp + 60, nonce, v, r, s);
        assertEq(usdc.balanceOf(bob), 10e6, "bob credited");
        assertEq(usdc.balanceOf(alice), 990e6, "alice debited");
        assertTrue(usdc.authorizationState(alice, nonce), "nonce used");
    }

    function test_TransferWithAuthorizationBytesSignature() public {
        bytes32 nonce = keccak256("n2");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 7e6, 0, block.timestamp + 60, nonce));
        usdc.transferWithAuthorization(alice, bob, 7e6, 0, block.timestamp + 60, nonce, abi.encodePacked(r, s, v));
        assertEq(usdc.balanceOf(bob), 7e6, "bob credited");
    }

    function test_TransferWithAuthorizationGas() public {
        bytes32 nonce = keccak256("gas");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, 0, block.timestamp + 60, nonce));
        uint256 before = gasleft();
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, block.timestamp + 60, nonce, v, r, s);
        uint256 used = before - gasleft();
        // Reference point for the bench: one x402 "exact" payment settles one such call per request.
        console.log("gas: transferWithAuthorization (execution, cold recipient)", used);
        assertLe(used, 100_000, "sane gas");
    }

    function test_ReceiveWithAuthorization() public {
        bytes32 nonce = keccak256("r1");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(RECEIVE_TYPEHASH, bob, 3e6, 0, block.timestamp + 60, nonce));
        vm.prank(bob);
        usdc.receiveWithAuthorization(alice, bob, 3e6, 0, block.timestamp + 60, nonce, v, r, s);
        assertEq(usdc.balanceOf(bob), 3e6, "bob credited");

        bytes32 nonce2 = keccak256("r2");
        (v, r, s) = vm.sign(aliceKey, _authDigest(RECEIVE_TYPEHASH, bob, 2e6, 0, block.timestamp + 60, nonce2));
        vm.prank(bob);
        usdc.receiveWithAuthorization(alice, bob, 2e6, 0, block.timestamp + 60, nonce2, abi.encodePacked(r, s, v));
        assertEq(usdc.balanceOf(bob), 5e6, "bob credited twice");
    }

    function test_RevertIf_ReceiveWithAuthorizationCallerIsNotPayee() public {
        bytes32 nonce = keccak256("r3");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(RECEIVE_TYPEHASH, bob, 3e6, 0, block.timestamp + 60, nonce));
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InvalidReceiver.selector, bob));
        usdc.receiveWithAuthorization(alice, bob, 3e6, 0, block.timestamp + 60, nonce, v, r, s);
    }

    function test_RevertIf_AuthorizationExpired() public {
        bytes32 nonce = keccak256("e1");
        uint256 validBefore = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, 0, validBefore, nonce));
        vm.expectRevert(MockUSDC.MockUSDC__AuthorizationExpired.selector);
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, validBefore, nonce, v, r, s);
    }

    function test_RevertIf_AuthorizationNotYetValid() public {
        bytes32 nonce = keccak256("e2");
        uint256 validAfter = block.timestamp;
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, validAfter, validAfter + 60, nonce));
        vm.expectRevert(MockUSDC.MockUSDC__AuthorizationNotYetValid.selector);
        usdc.transferWithAuthorization(alice, bob, 1e6, validAfter, validAfter + 60, nonce, v, r, s);
    }

    function test_RevertIf_AuthorizationNonceReused() public {
        bytes32 nonce = keccak256("dup");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, 0, block.timestamp + 60, nonce));
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, block.timestamp + 60, nonce, v, r, s);
        vm.expectRevert(abi.encodeWithSelector(ERC3009.ERC3009UsedAuthorization.selector, alice, nonce));
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, block.timestamp + 60, nonce, v, r, s);
    }

    function test_RevertIf_AuthorizationWrongSigner() public {
        bytes32 nonce = keccak256("w1");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(bobKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, 0, block.timestamp + 60, nonce));
        vm.expectRevert(ERC3009.ERC3009InvalidSignature.selector);
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, block.timestamp + 60, nonce, v, r, s);
        vm.expectRevert(ERC3009.ERC3009InvalidSignature.selector);
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, block.timestamp + 60, nonce, abi.encodePacked(r, s, v));
    }

    function test_RevertIf_AuthorizationValueTampered() public {
        bytes32 nonce = keccak256("w2");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, 0, block.timestamp + 60, nonce));
        vm.expectRevert(ERC3009.ERC3009InvalidSignature.selector);
        usdc.transferWithAuthorization(alice, bob, 2e6, 0, block.timestamp + 60, nonce, v, r, s);
    }

    function test_CancelAuthorization() public {
        bytes32 nonce = keccak256("c1");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _digest(keccak256(abi.encode(CANCEL_TYPEHASH, alice, nonce))));
        vm.expectEmit(true, true, false, false, address(usdc));
        emit AuthorizationCanceled(alice, nonce);
        usdc.cancelAuthorization(alice, nonce, v, r, s);
        assertTrue(usdc.authorizationState(alice, nonce), "nonce burnt");

        (v, r, s) = vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, 1e6, 0, block.timestamp + 60, nonce));
        vm.expectRevert(abi.encodeWithSelector(ERC3009.ERC3009UsedAuthorization.selector, alice, nonce));
        usdc.transferWithAuthorization(alice, bob, 1e6, 0, block.timestamp + 60, nonce, v, r, s);
    }

    function test_CancelAuthorizationBytesSignature() public {
        bytes32 nonce = keccak256("c2");
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _digest(keccak256(abi.encode(CANCEL_TYPEHASH, alice, nonce))));
        usdc.cancelAuthorization(alice, nonce, abi.encodePacked(r, s, v));
        assertTrue(usdc.authorizationState(alice, nonce), "nonce burnt");
    }

    function testFuzz_TransferWithAuthorization(uint256 value, bytes32 nonce) public {
        value = bound(value, 0, usdc.balanceOf(alice));
        (uint8 v, bytes32 r, bytes32 s) =
            vm.sign(aliceKey, _authDigest(TRANSFER_TYPEHASH, bob, value, 0, block.timestamp + 1, nonce));
        usdc.transferWithAuthorization(alice, bob, value, 0, block.timestamp + 1, nonce, v, r, s);
        assertEq(usdc.balanceOf(bob), value, "bob credited");
        assertEq(usdc.balanceOf(alice) + value, 1_000e6, "conserved");
    }

    /*//////////////////////////////////////////////////////////////
                                EIP-2612
    //////////////////////////////////////////////////////////////*/

    function _permitDigest(address spender, uint256 value, uint256 nonce, uint256 deadline)
        private
        view
        returns (bytes32)
    {
        return _digest(keccak256(abi.encode(PERMIT_TYPEHASH, alice, spender, value, nonce, deadline)));
    }

    function test_Permit() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(aliceKey, _permitDigest(bob, 50e6, 0, deadline));
        usdc.permit(alice, bob, 50e6, deadline, v, r, s);
        assertEq(usdc.allowance(alice, bob), 50e6, "allowance");
        assertEq(usdc.nonces(alice), 1, "nonce advanced");
    }

    function test_RevertIf_PermitExpired() public {
        uint256 deadline = block.timestamp - 1;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(aliceKey, _permitDigest(bob, 50e6, 0, deadline));
        vm.expectRevert(MockUSDC.MockUSDC__PermitExpired.selector);
        usdc.permit(alice, bob, 50e6, deadline, v, r, s);
    }

    function test_RevertIf_PermitReplayed() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(aliceKey, _permitDigest(bob, 50e6, 0, deadline));
        usdc.permit(alice, bob, 50e6, deadline, v, r, s);
        vm.expectRevert(MockUSDC.MockUSDC__InvalidSigner.selector);
        usdc.permit(alice, bob, 50e6, deadline, v, r, s);
    }

    function test_RevertIf_PermitWrongSigner() public {
        uint256 deadline = block.timestamp + 1 hours;
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(bobKey, _permitDigest(bob, 50e6, 0, deadline));
        vm.expectRevert(MockUSDC.MockUSDC__InvalidSigner.selector);
        usdc.permit(alice, bob, 50e6, deadline, v, r, s);
    }
}
