// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

import {ISettlement} from "./interfaces/ISettlement.sol";

/// @title Settlement
/// @notice Escrow debit wallet for AEP2 payers and the entry point that settles Groth16-proven batches
///         of session-key-signed mandates against EIP-712 intents.
/// @dev Note:
///      - The payee allow-list of an intent is stored only as its hash: mandates bind the payee under the
///        payer's session key, and the circuit's public inputs carry no per-intent payee list, so the
///        allow-list is enforced off chain (gateway), not here.
///      - `timeRef` may lie in the past (only `timeRef <= block.timestamp` is required), so mandates of an
///        intent stay settleable after its validBefore with a timeRef inside its window. Payers bound their
///        exposure with maxAmount and the withdrawal delay protects processors from withdrawal races.
///      - Deposits credit the tokens actually received; rebasing tokens are not supported.
///      - maxAmount is stored saturated at 2^96 - 1 and maxPerPayment as the circuit's cap
///        min(maxPerPayment, 2^64 - 1); both saturations are unreachable with real token supplies.
contract Settlement is ISettlement, EIP712, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /*//////////////////////////////////////////////////////////////
                                CONSTANTS
    //////////////////////////////////////////////////////////////*/

    /// @notice BN254 scalar field order r (circom's field).
    uint256 public constant FIELD_MODULUS =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;

    /// @notice EIP-712 type hash of {Intent} (PROTOCOL.md §2).
    bytes32 public constant INTENT_TYPEHASH = keccak256(
        "Intent(address payer,address asset,uint256 sessionKeyHash,uint256 maxAmount,uint256 maxPerPayment,"
        "uint64 validAfter,uint64 validBefore,address[] payees,address processor,bytes32 salt)"
    );

    /// @dev Upper bound on either slot count, so every loop stays bounded.
    uint256 private constant _MAX_SLOTS = 256;
    /// @dev Bit widths of the packed public-input words (PROTOCOL.md §5).
    uint256 private constant _TOTAL_LIMIT = 1 << 88;
    uint256 private constant _PAYOUT_LIMIT = 1 << 93;

    /*//////////////////////////////////////////////////////////////
                               IMMUTABLES
    //////////////////////////////////////////////////////////////*/

    address private immutable _VERIFIER;
    uint256 private immutable _INTENT_SLOTS;
    uint256 private immutable _PAYEE_SLOTS;
    uint64 private immutable _WITHDRAWAL_DELAY;
    /// @dev Selector of verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[K]), K = 1 + 2I + P.
    bytes4 private immutable _VERIFY_SELECTOR;

    /*//////////////////////////////////////////////////////////////
                                 STORAGE
    //////////////////////////////////////////////////////////////*/

    mapping(address payer => mapping(address token => uint256)) private _balances;
    mapping(address payer => mapping(address token => Withdrawal)) private _withdrawals;
    mapping(address payer => mapping(address processor => bool)) private _processors;
    mapping(bytes32 intentId => StoredIntent) private _intents;
    mapping(bytes32 intentId => bytes32 payeesHash) private _payeesHashes;
    mapping(uint256 sessionKeyHash => bytes32 intentId) private _sessionKeys;

    /// @dev An intent's settlement-relevant state in five slots; settleBatch reads all five once and
    ///      writes only the last (spent, nextNonce). payeesHash lives apart: settlement never reads it.
    struct StoredIntent {
        // slot 0
        address payer;
        uint64 maxPerPayment; // the circuit's cap, min(maxPerPayment, 2^64 - 1)
        bool revoked;
        // slot 1
        address asset;
        uint64 validAfter;
        // slot 2
        address processor;
        uint64 validBefore;
        // slot 3
        uint256 sessionKeyHash;
        // slot 4
        uint96 maxAmount; // saturated at 2^96 - 1
        uint96 spent;
        uint40 nextNonce;
    }

    /// @dev What the public inputs need from one settled intent, read once from storage.
    struct SlotInputs {
        uint256 keyHash;
        uint256 startNonce;
        uint256 cap;
    }

    /*//////////////////////////////////////////////////////////////
                               CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    /// @param verifier_ Groth16 verifier exposing verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[K]).
    /// @param intentSlots_ Intent slots I of the circuit (1..256).
    /// @param payeeSlots_ Payee slots P of the circuit (1..256).
    /// @param withdrawalDelay_ Seconds a withdrawal request waits before it can be executed.
    constructor(address verifier_, uint256 intentSlots_, uint256 payeeSlots_, uint64 withdrawalDelay_)
        EIP712("AEP2 Settlement", "1")
    {
        if (
            verifier_.code.length == 0 || intentSlots_ == 0 || intentSlots_ > _MAX_SLOTS || payeeSlots_ == 0
                || payeeSlots_ > _MAX_SLOTS
        ) revert Settlement__InvalidConfig();
        _VERIFIER = verifier_;
        _INTENT_SLOTS = intentSlots_;
        _PAYEE_SLOTS = payeeSlots_;
        _WITHDRAWAL_DELAY = withdrawalDelay_;
        uint256 k = 1 + 2 * intentSlots_ + payeeSlots_;
        _VERIFY_SELECTOR = bytes4(
            keccak256(
                bytes(
                    string.concat(
                        "verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[", Strings.toString(k), "])"
                    )
                )
            )
        );
    }

    /*//////////////////////////////////////////////////////////////
                                 ESCROW
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    function deposit(address token, uint256 amount) external nonReentrant {
        _deposit(msg.sender, token, amount);
    }

    /// @inheritdoc ISettlement
    function depositFor(address payer, address token, uint256 amount) external nonReentrant {
        if (payer == address(0)) revert Settlement__ZeroAddress();
        _deposit(payer, token, amount);
    }

    /// @inheritdoc ISettlement
    /// @dev A permit front-run by someone else has already set the allowance, so a failing permit is
    ///      ignored and the transfer decides.
    function depositWithPermit(address token, uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        nonReentrant
    {
        try IERC20Permit(token).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(msg.sender, token, amount);
    }

    /// @inheritdoc ISettlement
    function balanceOf(address payer, address token) external view returns (uint256) {
        return _balances[payer][token];
    }

    /// @inheritdoc ISettlement
    function requestWithdrawal(address token, uint256 amount) external {
        if (amount == 0) revert Settlement__ZeroAmount();
        if (amount > _balances[msg.sender][token]) revert Settlement__InsufficientBalance();
        uint64 readyAt = SafeCast.toUint64(block.timestamp + _WITHDRAWAL_DELAY);
        _withdrawals[msg.sender][token] = Withdrawal({amount: SafeCast.toUint192(amount), readyAt: readyAt});
        emit WithdrawalRequested(msg.sender, token, amount, readyAt);
    }

    /// @inheritdoc ISettlement
    /// @dev Settlement may debit funds under a pending request until it executes, so only what is left
    ///      is paid.
    function executeWithdrawal(address token) external nonReentrant returns (uint256 paid) {
        Withdrawal memory w = _withdrawals[msg.sender][token];
        if (w.amount == 0) revert Settlement__NoWithdrawalPending();
        if (block.timestamp < w.readyAt) revert Settlement__WithdrawalNotReady();
        uint256 balance = _balances[msg.sender][token];
        paid = w.amount < balance ? w.amount : balance;
        delete _withdrawals[msg.sender][token];
        unchecked {
            _balances[msg.sender][token] = balance - paid;
        }
        emit WithdrawalExecuted(msg.sender, token, paid);
        if (paid != 0) IERC20(token).safeTransfer(msg.sender, paid);
    }

    /// @inheritdoc ISettlement
    function cancelWithdrawal(address token) external {
        if (_withdrawals[msg.sender][token].amount == 0) revert Settlement__NoWithdrawalPending();
        delete _withdrawals[msg.sender][token];
        emit WithdrawalCancelled(msg.sender, token);
    }

    /// @inheritdoc ISettlement
    function pendingWithdrawal(address payer, address token) external view returns (Withdrawal memory) {
        return _withdrawals[payer][token];
    }

    /*//////////////////////////////////////////////////////////////
                               PROCESSORS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    function setProcessor(address processor, bool allowed) external {
        if (processor == address(0)) revert Settlement__ZeroAddress();
        _processors[msg.sender][processor] = allowed;
        emit ProcessorSet(msg.sender, processor, allowed);
    }

    /// @inheritdoc ISettlement
    function isProcessor(address payer, address processor) external view returns (bool) {
        return _processors[payer][processor];
    }

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    function registerIntent(Intent calldata intent, bytes calldata signature) external returns (bytes32 intentId) {
        uint256 keyHash = intent.sessionKeyHash;
        if (keyHash == 0 || keyHash >= FIELD_MODULUS) revert Settlement__InvalidSessionKey();
        if (intent.validBefore <= intent.validAfter) revert Settlement__InvalidValidityWindow();
        if (intent.maxPerPayment == 0) revert Settlement__ZeroMaxPerPayment();
        if (intent.asset == address(0)) revert Settlement__ZeroAddress();
        bytes32 payeesHash = _payeesHash(intent.payees);

        intentId = _hashTypedDataV4(_structHash(intent, payeesHash));
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(intentId, signature);
        if (err != ECDSA.RecoverError.NoError || signer != intent.payer) revert Settlement__InvalidSignature();

        if (_intents[intentId].payer != address(0)) revert Settlement__IntentExists();
        if (_sessionKeys[keyHash] != bytes32(0)) revert Settlement__SessionKeyInUse();
        _sessionKeys[keyHash] = intentId;

        uint256 maxAmount = intent.maxAmount;
        uint256 cap = intent.maxPerPayment;
        _intents[intentId] = StoredIntent({
            payer: intent.payer,
            // forge-lint: disable-next-line(unsafe-typecast)
            maxPerPayment: cap > type(uint64).max ? type(uint64).max : uint64(cap), // saturated
            revoked: false,
            asset: intent.asset,
            validAfter: intent.validAfter,
            processor: intent.processor,
            validBefore: intent.validBefore,
            sessionKeyHash: keyHash,
            // forge-lint: disable-next-line(unsafe-typecast)
            maxAmount: maxAmount > type(uint96).max ? type(uint96).max : uint96(maxAmount), // saturated
            spent: 0,
            nextNonce: 0
        });
        _payeesHashes[intentId] = payeesHash;
        emit IntentRegistered(intentId, intent.payer, intent.asset, keyHash);
    }

    /// @inheritdoc ISettlement
    function revokeIntent(bytes32 intentId) external {
        StoredIntent storage record = _intents[intentId];
        if (record.payer != msg.sender || msg.sender == address(0)) revert Settlement__NotPayer();
        record.revoked = true;
        emit IntentRevoked(intentId, msg.sender);
    }

    /// @inheritdoc ISettlement
    function getIntent(bytes32 intentId) external view returns (IntentRecord memory) {
        StoredIntent memory stored = _intents[intentId];
        return IntentRecord({
            payer: stored.payer,
            asset: stored.asset,
            sessionKeyHash: stored.sessionKeyHash,
            maxAmount: stored.maxAmount,
            maxPerPayment: stored.maxPerPayment,
            validAfter: stored.validAfter,
            validBefore: stored.validBefore,
            payeesHash: _payeesHashes[intentId],
            processor: stored.processor,
            spent: stored.spent,
            nextNonce: stored.nextNonce,
            revoked: stored.revoked
        });
    }

    /// @inheritdoc ISettlement
    function intentDigest(Intent calldata intent) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(intent, _payeesHash(intent.payees)));
    }

    /// @inheritdoc ISettlement
    function intentOfSessionKey(uint256 sessionKeyHash) external view returns (bytes32) {
        return _sessionKeys[sessionKeyHash];
    }

    /// @notice EIP-712 domain separator (recomputed if the chain id changes).
    function DOMAIN_SEPARATOR() external view returns (bytes32) {
        return _domainSeparatorV4();
    }

    /*//////////////////////////////////////////////////////////////
                               SETTLEMENT
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    function settleBatch(uint256[8] calldata proof, Batch calldata batch) external nonReentrant {
        IntentSettlement[] calldata intents = batch.intents;
        Payout[] calldata payouts = batch.payouts;
        if (intents.length == 0) revert Settlement__EmptyBatch();
        if (intents.length > _INTENT_SLOTS || payouts.length > _PAYEE_SLOTS) revert Settlement__BatchTooLarge();
        uint64 timeRef = batch.timeRef;
        if (timeRef > block.timestamp) revert Settlement__TimeRefInFuture();
        address asset = batch.asset;

        (SlotInputs[] memory slots, uint256 total, uint256 mandates) = _debitAll(intents, asset, timeRef);
        if (_sumPayouts(payouts) != total) revert Settlement__UnbalancedBatch();
        _verifyProof(proof, _publicInputs(timeRef, intents, payouts, slots));
        _pay(asset, payouts);
        emit BatchSettled(msg.sender, asset, timeRef, mandates, total);
    }

    /// @inheritdoc ISettlement
    function publicInputs(Batch calldata batch) external view returns (uint256[] memory) {
        uint256 n = batch.intents.length;
        if (n > _INTENT_SLOTS || batch.payouts.length > _PAYEE_SLOTS) revert Settlement__BatchTooLarge();
        SlotInputs[] memory slots = new SlotInputs[](n);
        for (uint256 i; i < n; ++i) {
            StoredIntent storage record = _intents[batch.intents[i].intentId];
            slots[i] = SlotInputs(record.sessionKeyHash, record.nextNonce, record.maxPerPayment);
        }
        return _publicInputs(batch.timeRef, batch.intents, batch.payouts, slots);
    }

    /*//////////////////////////////////////////////////////////////
                             CONFIGURATION
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    function verifier() external view returns (address) {
        return _VERIFIER;
    }

    /// @inheritdoc ISettlement
    function intentSlots() external view returns (uint256) {
        return _INTENT_SLOTS;
    }

    /// @inheritdoc ISettlement
    function payeeSlots() external view returns (uint256) {
        return _PAYEE_SLOTS;
    }

    /// @inheritdoc ISettlement
    function withdrawalDelay() external view returns (uint64) {
        return _WITHDRAWAL_DELAY;
    }

    /// @notice Selector of the verifier's verifyProof for K = 1 + 2I + P public inputs.
    function verifierSelector() external view returns (bytes4) {
        return _VERIFY_SELECTOR;
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    function _deposit(address payer, address token, uint256 amount) private {
        if (amount == 0) revert Settlement__ZeroAmount();
        IERC20 erc20 = IERC20(token);
        uint256 before = erc20.balanceOf(address(this));
        erc20.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = erc20.balanceOf(address(this)) - before;
        _balances[payer][token] += received;
        emit Deposited(payer, token, msg.sender, received);
    }

    /// @dev Runs _debit over the strictly ascending intents; returns their public-input data and sums.
    function _debitAll(IntentSettlement[] calldata intents, address asset, uint64 timeRef)
        private
        returns (SlotInputs[] memory slots, uint256 total, uint256 mandates)
    {
        uint256 n = intents.length;
        slots = new SlotInputs[](n);
        bytes32 previous;
        for (uint256 i; i < n; ++i) {
            IntentSettlement calldata s = intents[i];
            if (s.intentId <= previous) revert Settlement__UnsortedIntents();
            previous = s.intentId;
            slots[i] = _debit(s, asset, timeRef);
            total += s.total;
            mandates += s.count;
        }
    }

    /// @dev Sum of the payouts, requiring non-zero payees and amounts that fit their public-input word.
    function _sumPayouts(Payout[] calldata payouts) private pure returns (uint256 paid) {
        for (uint256 k; k < payouts.length; ++k) {
            Payout calldata p = payouts[k];
            if (p.payee == address(0)) revert Settlement__InvalidPayee();
            if (p.amount >= _PAYOUT_LIMIT) revert Settlement__AmountOutOfRange();
            paid += p.amount;
        }
    }

    /// @dev Interactions last: every check and effect of the batch has happened.
    function _pay(address asset, Payout[] calldata payouts) private {
        for (uint256 k; k < payouts.length; ++k) {
            Payout calldata p = payouts[k];
            IERC20(asset).safeTransfer(p.payee, p.amount);
            emit PayoutSent(p.payee, asset, p.amount);
        }
    }

    /// @dev Checks one intent settlement against its stored intent and applies its effects (spent,
    ///      nextNonce, payer debit). Returns the stored values the public inputs need.
    function _debit(IntentSettlement calldata s, address asset, uint64 timeRef)
        private
        returns (SlotInputs memory inputs)
    {
        StoredIntent memory record = _intents[s.intentId];
        if (record.payer == address(0)) revert Settlement__UnknownIntent();
        if (record.revoked) revert Settlement__IntentRevoked();
        if (record.asset != asset) revert Settlement__AssetMismatch();
        if (timeRef < record.validAfter) revert Settlement__IntentNotYetValid();
        if (timeRef >= record.validBefore) revert Settlement__IntentExpired();
        if (s.count == 0) revert Settlement__ZeroCount();
        if (s.lastNonce < record.nextNonce) revert Settlement__StaleNonce();
        if (s.lastNonce == type(uint40).max) revert Settlement__NonceExhausted();
        if (s.total >= _TOTAL_LIMIT) revert Settlement__AmountOutOfRange();
        uint256 spent = uint256(record.spent) + s.total;
        if (spent > record.maxAmount) revert Settlement__IntentBudgetExceeded();
        uint256 balance = _balances[record.payer][asset];
        if (balance < s.total) revert Settlement__InsufficientBalance();
        if (
            !_processors[record.payer][msg.sender]
                || (record.processor != address(0) && record.processor != msg.sender)
        ) revert Settlement__UnauthorizedProcessor();

        StoredIntent storage stored = _intents[s.intentId];
        // casting to uint96 is safe because spent <= record.maxAmount, a uint96
        // forge-lint: disable-next-line(unsafe-typecast)
        stored.spent = uint96(spent);
        stored.nextNonce = s.lastNonce + 1; // same slot as spent: one SSTORE
        unchecked {
            _balances[record.payer][asset] = balance - s.total;
        }
        emit IntentSettled(s.intentId, record.payer, record.nextNonce, s.lastNonce, s.count, s.total);
        return SlotInputs(record.sessionKeyHash, record.nextNonce, record.maxPerPayment);
    }

    /// @dev The verifier's public signals, in the order of PROTOCOL.md §5:
    ///      [0]          timeRef
    ///      [1 + s]      keyHash of intent slot s                                      (0: unused slot)
    ///      [1 + I + s]  startNonce + lastNonce<<40 + count<<80 + total<<96 + cap<<184 (0: unused slot)
    ///      [1 + 2I + k] payee + amount<<160                                           (0: unused slot)
    function _publicInputs(
        uint64 timeRef,
        IntentSettlement[] calldata intents,
        Payout[] calldata payouts,
        SlotInputs[] memory slots
    ) private view returns (uint256[] memory pub) {
        uint256 slotsI = _INTENT_SLOTS;
        pub = new uint256[](1 + 2 * slotsI + _PAYEE_SLOTS);
        pub[0] = timeRef;
        for (uint256 s; s < slots.length; ++s) {
            IntentSettlement calldata it = intents[s];
            SlotInputs memory slot = slots[s];
            pub[1 + s] = slot.keyHash;
            pub[1 + slotsI + s] = slot.startNonce | (uint256(it.lastNonce) << 40) | (uint256(it.count) << 80)
                | (uint256(it.total) << 96) | (slot.cap << 184);
        }
        uint256 payeeBase = 1 + 2 * slotsI;
        for (uint256 k; k < payouts.length; ++k) {
            Payout calldata p = payouts[k];
            pub[payeeBase + k] = uint256(uint160(p.payee)) | (uint256(p.amount) << 160);
        }
    }

    /// @dev Calls verifyProof(a, b, c, pub) with a = [p0, p1], b = [[p2, p3], [p4, p5]], c = [p6, p7];
    ///      static arrays encode inline, so the calldata is selector ++ proof ++ pub. Gas is passed
    ///      explicitly: a pairing check starved of gas returns false instead of reverting.
    function _verifyProof(uint256[8] calldata proof, uint256[] memory pub) private view {
        (bool ok, bytes memory ret) =
            _VERIFIER.staticcall{gas: gasleft()}(abi.encodePacked(_VERIFY_SELECTOR, proof, pub));
        if (!ok || ret.length != 32 || abi.decode(ret, (uint256)) != 1) revert Settlement__InvalidProof();
    }

    /// @dev keccak256(abi.encodePacked(payees)), requiring strictly ascending non-zero addresses.
    function _payeesHash(address[] calldata payees) private pure returns (bytes32) {
        uint160 previous;
        for (uint256 i; i < payees.length; ++i) {
            uint160 current = uint160(payees[i]);
            if (current <= previous) revert Settlement__UnsortedPayees();
            previous = current;
        }
        return keccak256(abi.encodePacked(payees));
    }

    function _structHash(Intent calldata intent, bytes32 payeesHash) private pure returns (bytes32) {
        return keccak256(
            abi.encode(
                INTENT_TYPEHASH,
                intent.payer,
                intent.asset,
                intent.sessionKeyHash,
                intent.maxAmount,
                intent.maxPerPayment,
                intent.validAfter,
                intent.validBefore,
                payeesHash,
                intent.processor,
                intent.salt
            )
        );
    }
}
