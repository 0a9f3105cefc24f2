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

import {PoseidonT5} from "poseidon-solidity/PoseidonT5.sol";

import {IBatchVerifier} from "./interfaces/IBatchVerifier.sol";
import {ISettlement} from "./interfaces/ISettlement.sol";

/// @title Settlement
/// @notice Escrow debit wallet for AEP2 payers and the entry point that settles Groth16-proven batches
///         of session-key-signed mandates against EIP-712 intents.
/// @dev The settlement guarantee (PROTOCOL.md §7): a mandate a gateway served at time t settles in any
///      batch its intent's processor submits before t + settlementWindow, whatever the payer does after t:
///      - nonces are a per-intent bitmap, so settling one mandate never invalidates another;
///      - revocation and de-authorisation take effect settlementWindow seconds late, and a withdrawal waits
///        withdrawalDelay >= settlementWindow while its funds stay debitable;
///      - every mandate is bound to its intent (the proof opens the intent's commitment, computed here at
///        registration from the signed intent) and to the intent's payee allowlist.
///      Deposits credit the tokens actually received; rebasing tokens are not supported. maxAmount is stored
///      saturated at 2^96 - 1, maxPerPayment as the circuit's cap min(maxPerPayment, 2^64 - 1) and validBefore
///      at 2^32 - 1; all saturations are unreachable in practice.
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
        "uint64 validAfter,uint64 validBefore,uint256 payeesRoot,address processor,bytes32 salt)"
    );

    /// @notice Depth of the payee allowlist tree the circuit checks (PROTOCOL.md §2).
    uint256 public constant PAYEE_TREE_DEPTH = 8;

    /// @dev Upper bound on either slot count, so every loop stays bounded.
    uint256 private constant _MAX_SLOTS = 256;
    /// @dev Bit widths of the packed public-input words (PROTOCOL.md §5).
    uint256 private constant _WINDOW_LIMIT = 1 << 33;
    uint256 private constant _TOTAL_LIMIT = 1 << 88;
    uint256 private constant _PAYOUT_LIMIT = 1 << 93;

    /*//////////////////////////////////////////////////////////////
                               IMMUTABLES
    //////////////////////////////////////////////////////////////*/

    address private immutable _VERIFIER;
    uint256 private immutable _BATCH_SIZE;
    uint256 private immutable _INTENT_SLOTS;
    uint256 private immutable _PAYEE_SLOTS;
    uint64 private immutable _WITHDRAWAL_DELAY;
    uint64 private immutable _SETTLEMENT_WINDOW;
    /// @dev Selector of verifyProof(uint256[2],uint256[2][2],uint256[2],uint256[K]), K = 1 + 2I + P.
    bytes4 private immutable _VERIFY_SELECTOR;

    /*//////////////////////////////////////////////////////////////
                                 STORAGE
    //////////////////////////////////////////////////////////////*/

    /// @dev Escrow is held per processor: only the intent's processor debits it, and each processor's
    ///      gateways reserve against their own account, so a payer cannot promise the same funds twice.
    mapping(address payer => mapping(address token => mapping(address processor => uint256))) private _balances;
    mapping(address payer => mapping(address token => mapping(address processor => Withdrawal))) private
        _withdrawals;
    mapping(address payer => mapping(address processor => uint64 until)) private _consentUntil;
    mapping(bytes32 intentId => StoredIntent) private _intents;
    mapping(bytes32 intentId => IntentTerms) private _terms;
    /// @dev Two 128-nonce windows per word: window w is bits (w & 1) * 128 .. + 127 of word w >> 1. Word 0
    ///      (nonces 0-255, where most intents live) is stored inverted and set to all ones at registration,
    ///      so its first settlement rewrites a non-zero slot instead of paying for a new one (see _nonceWord).
    mapping(bytes32 intentId => mapping(uint256 word => uint256)) private _nonceWords;

    /// @dev What settleBatch reads of an intent, in four slots; it writes only slot 2 (spent).
    struct StoredIntent {
        // slot 0
        address payer;
        uint32 validAfter;
        uint32 validBefore; // saturated
        uint32 revokedAt;
        // slot 1
        address processor;
        uint96 maxAmount; // saturated at 2^96 - 1
        // slot 2
        address asset;
        uint96 spent;
        // slot 3
        uint256 commitment;
    }

    /// @dev The rest of the signed intent, for getIntent only (the commitment binds it for settlement).
    struct IntentTerms {
        uint256 sessionKeyHash;
        uint256 payeesRoot;
        uint64 maxPerPayment; // the circuit's cap
    }

    /*//////////////////////////////////////////////////////////////
                               CONSTRUCTOR
    //////////////////////////////////////////////////////////////*/

    /// @param verifier_ Generated Groth16 verifier of Batch(N, I, P, D) (IBatchVerifier); its shape sets the
    ///        slot counts, D must be PAYEE_TREE_DEPTH.
    /// @param withdrawalDelay_ Seconds a withdrawal request waits before it can be executed (>= the window).
    /// @param settlementWindow_ Seconds a served mandate has to settle (non-zero).
    constructor(address verifier_, uint64 withdrawalDelay_, uint64 settlementWindow_)
        EIP712("AEP2 Settlement", "1")
    {
        if (verifier_.code.length == 0) revert Settlement__InvalidConfig();
        uint256 n;
        uint256 intentSlots_;
        uint256 payeeSlots_;
        uint256 depth;
        bool developmentSetup;
        try IBatchVerifier(verifier_).batchShape() returns (
            uint256 n_, uint256 i_, uint256 p_, uint256 d_, bool dev_
        ) {
            (n, intentSlots_, payeeSlots_, depth, developmentSetup) = (n_, i_, p_, d_, dev_);
        } catch {
            revert Settlement__InvalidConfig();
        }
        if (
            n == 0 || intentSlots_ == 0 || intentSlots_ > _MAX_SLOTS || payeeSlots_ == 0
                || payeeSlots_ > _MAX_SLOTS || depth != PAYEE_TREE_DEPTH || settlementWindow_ == 0
                || withdrawalDelay_ < settlementWindow_
        ) revert Settlement__InvalidConfig();
        if (developmentSetup && block.chainid != 31337 && block.chainid != 1337) {
            revert Settlement__DevelopmentVerifier();
        }
        _VERIFIER = verifier_;
        _BATCH_SIZE = n;
        _INTENT_SLOTS = intentSlots_;
        _PAYEE_SLOTS = payeeSlots_;
        _WITHDRAWAL_DELAY = withdrawalDelay_;
        _SETTLEMENT_WINDOW = settlementWindow_;
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
    function deposit(address token, address processor, uint256 amount) external nonReentrant {
        _deposit(msg.sender, token, processor, amount);
    }

    /// @inheritdoc ISettlement
    function depositFor(address payer, address token, address processor, uint256 amount) external nonReentrant {
        if (payer == address(0)) revert Settlement__ZeroAddress();
        _deposit(payer, token, processor, amount);
    }

    /// @inheritdoc ISettlement
    /// @dev A permit front-run by someone else has already set the allowance, so a failing permit is
    ///      ignored and the transfer decides.
    function depositWithPermit(
        address token,
        address processor,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant {
        try IERC20Permit(token).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(msg.sender, token, processor, amount);
    }

    /// @inheritdoc ISettlement
    function balanceOf(address payer, address token, address processor) external view returns (uint256) {
        return _balances[payer][token][processor];
    }

    /// @inheritdoc ISettlement
    function requestWithdrawal(address token, address processor, uint256 amount) external {
        if (amount == 0) revert Settlement__ZeroAmount();
        if (amount > _balances[msg.sender][token][processor]) revert Settlement__InsufficientBalance();
        uint64 readyAt = SafeCast.toUint64(block.timestamp + _WITHDRAWAL_DELAY);
        _withdrawals[msg.sender][token][processor] =
            Withdrawal({amount: SafeCast.toUint192(amount), readyAt: readyAt});
        emit WithdrawalRequested(msg.sender, token, processor, amount, readyAt);
    }

    /// @inheritdoc ISettlement
    /// @dev Settlement may debit funds under a pending request until it executes, so only what is left
    ///      is paid.
    function executeWithdrawal(address token, address processor) external nonReentrant returns (uint256 paid) {
        Withdrawal memory w = _withdrawals[msg.sender][token][processor];
        if (w.amount == 0) revert Settlement__NoWithdrawalPending();
        if (block.timestamp < w.readyAt) revert Settlement__WithdrawalNotReady();
        uint256 balance = _balances[msg.sender][token][processor];
        paid = w.amount < balance ? w.amount : balance;
        delete _withdrawals[msg.sender][token][processor];
        unchecked {
            _balances[msg.sender][token][processor] = balance - paid;
        }
        emit WithdrawalExecuted(msg.sender, token, processor, paid);
        if (paid != 0) IERC20(token).safeTransfer(msg.sender, paid);
    }

    /// @inheritdoc ISettlement
    function cancelWithdrawal(address token, address processor) external {
        if (_withdrawals[msg.sender][token][processor].amount == 0) revert Settlement__NoWithdrawalPending();
        delete _withdrawals[msg.sender][token][processor];
        emit WithdrawalCancelled(msg.sender, token, processor);
    }

    /// @inheritdoc ISettlement
    function pendingWithdrawal(address payer, address token, address processor)
        external
        view
        returns (Withdrawal memory)
    {
        return _withdrawals[payer][token][processor];
    }

    /*//////////////////////////////////////////////////////////////
                               PROCESSORS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    function setProcessor(address processor, bool allowed) external {
        if (processor == address(0)) revert Settlement__ZeroAddress();
        uint64 until = type(uint64).max;
        if (!allowed) {
            // Served mandates keep their settlement window; consent never lengthens by withdrawing it.
            uint64 current = _consentUntil[msg.sender][processor];
            uint64 lapse = SafeCast.toUint64(block.timestamp + _SETTLEMENT_WINDOW);
            until = current < lapse ? current : lapse;
        }
        _consentUntil[msg.sender][processor] = until;
        emit ProcessorSet(msg.sender, processor, allowed, until);
    }

    /// @inheritdoc ISettlement
    function isProcessor(address payer, address processor) external view returns (bool) {
        return block.timestamp < _consentUntil[payer][processor];
    }

    /// @inheritdoc ISettlement
    function processorConsentUntil(address payer, address processor) external view returns (uint64) {
        return _consentUntil[payer][processor];
    }

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    /// @inheritdoc ISettlement
    /// @dev Registration computes the commitment the circuit opens: Poseidon(uint256(intentId) >> 8,
    ///      sessionKeyHash, payeesRoot, cap) (circomlib Poseidon(4)). Anyone may register a signed intent, and
    ///      an intent id can be registered once, so nobody can keep a signed intent from being registered.
    function registerIntent(Intent calldata intent, bytes calldata signature) external returns (bytes32 intentId) {
        uint256 keyHash = intent.sessionKeyHash;
        if (keyHash == 0 || keyHash >= FIELD_MODULUS) revert Settlement__InvalidSessionKey();
        if (intent.payeesRoot >= FIELD_MODULUS) revert Settlement__InvalidPayeesRoot();
        if (intent.validBefore <= intent.validAfter || intent.validAfter >= type(uint32).max) {
            revert Settlement__InvalidValidityWindow();
        }
        if (intent.validBefore <= block.timestamp) revert Settlement__IntentExpired();
        if (intent.maxAmount == 0) revert Settlement__ZeroMaxAmount();
        if (intent.maxPerPayment == 0) revert Settlement__ZeroMaxPerPayment();
        if (intent.asset == address(0) || intent.processor == address(0)) revert Settlement__ZeroAddress();

        intentId = _hashTypedDataV4(_structHash(intent));
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(intentId, signature);
        if (err != ECDSA.RecoverError.NoError || signer != intent.payer) revert Settlement__InvalidSignature();
        if (_intents[intentId].payer != address(0)) revert Settlement__IntentExists();

        uint256 cap = intent.maxPerPayment > type(uint64).max ? type(uint64).max : intent.maxPerPayment;
        uint256 maxAmount = intent.maxAmount;
        uint256 validBefore = intent.validBefore;
        _intents[intentId] = StoredIntent({
            payer: intent.payer,
            // forge-lint: disable-next-line(unsafe-typecast)
            validAfter: uint32(intent.validAfter), // checked above
            // forge-lint: disable-next-line(unsafe-typecast)
            validBefore: validBefore > type(uint32).max ? type(uint32).max : uint32(validBefore), // saturated
            revokedAt: 0,
            processor: intent.processor,
            // forge-lint: disable-next-line(unsafe-typecast)
            maxAmount: maxAmount > type(uint96).max ? type(uint96).max : uint96(maxAmount), // saturated
            asset: intent.asset,
            spent: 0,
            commitment: PoseidonT5.hash([uint256(intentId) >> 8, keyHash, intent.payeesRoot, cap])
        });
        // forge-lint: disable-next-line(unsafe-typecast)
        _terms[intentId] = IntentTerms(keyHash, intent.payeesRoot, uint64(cap));
        _nonceWords[intentId][0] = type(uint256).max; // word 0 inverted: no nonce settled
        emit IntentRegistered(intentId, intent.payer, intent.asset, keyHash);
    }

    /// @inheritdoc ISettlement
    function revokeIntent(bytes32 intentId) external {
        StoredIntent storage record = _intents[intentId];
        if (record.payer != msg.sender || msg.sender == address(0)) revert Settlement__NotPayer();
        uint256 revokedAt = record.revokedAt;
        if (revokedAt == 0) {
            revokedAt = block.timestamp;
            record.revokedAt = SafeCast.toUint32(revokedAt);
        }
        emit IntentRevoked(intentId, msg.sender, SafeCast.toUint64(revokedAt + _SETTLEMENT_WINDOW));
    }

    /// @inheritdoc ISettlement
    function getIntent(bytes32 intentId) external view returns (IntentRecord memory) {
        StoredIntent memory stored = _intents[intentId];
        IntentTerms memory terms = _terms[intentId];
        return IntentRecord({
            payer: stored.payer,
            asset: stored.asset,
            sessionKeyHash: terms.sessionKeyHash,
            maxAmount: stored.maxAmount,
            maxPerPayment: terms.maxPerPayment,
            validAfter: stored.validAfter,
            validBefore: stored.validBefore,
            payeesRoot: terms.payeesRoot,
            processor: stored.processor,
            spent: stored.spent,
            revokedAt: stored.revokedAt,
            commitment: stored.commitment
        });
    }

    /// @inheritdoc ISettlement
    function intentDigest(Intent calldata intent) external view returns (bytes32) {
        return _hashTypedDataV4(_structHash(intent));
    }

    /// @inheritdoc ISettlement
    function settledNonces(bytes32 intentId, uint64 window) external view returns (uint128) {
        if (_intents[intentId].payer == address(0)) return 0;
        // forge-lint: disable-next-line(unsafe-typecast)
        return uint128(_nonceWord(_nonceWords[intentId], window >> 1) >> ((window & 1) * 128));
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
        if (timeRef + uint256(_SETTLEMENT_WINDOW) <= block.timestamp) revert Settlement__TimeRefTooOld();
        address asset = batch.asset;

        (uint256[] memory commitments, uint256 total, uint256 mandates) = _debitAll(intents, asset, timeRef);
        if (_sumPayouts(payouts) != total) revert Settlement__UnbalancedBatch();
        _verifyProof(proof, _publicInputs(timeRef, intents, payouts, commitments));
        _pay(asset, payouts);
        emit BatchSettled(msg.sender, asset, timeRef, mandates, total);
    }

    /// @inheritdoc ISettlement
    function publicInputs(Batch calldata batch) external view returns (uint256[] memory) {
        uint256 n = batch.intents.length;
        if (n > _INTENT_SLOTS || batch.payouts.length > _PAYEE_SLOTS) revert Settlement__BatchTooLarge();
        uint256[] memory commitments = new uint256[](n);
        for (uint256 i; i < n; ++i) {
            commitments[i] = _intents[batch.intents[i].intentId].commitment;
        }
        return _publicInputs(batch.timeRef, batch.intents, batch.payouts, commitments);
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

    /// @inheritdoc ISettlement
    function settlementWindow() external view returns (uint64) {
        return _SETTLEMENT_WINDOW;
    }

    /// @inheritdoc ISettlement
    function batchSize() external view returns (uint256) {
        return _BATCH_SIZE;
    }

    /// @notice Selector of the verifier's verifyProof for K = 1 + 2I + P public inputs.
    function verifierSelector() external view returns (bytes4) {
        return _VERIFY_SELECTOR;
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    function _deposit(address payer, address token, address processor, uint256 amount) private {
        if (amount == 0) revert Settlement__ZeroAmount();
        if (processor == address(0)) revert Settlement__ZeroAddress();
        IERC20 erc20 = IERC20(token);
        uint256 before = erc20.balanceOf(address(this));
        erc20.safeTransferFrom(msg.sender, address(this), amount);
        uint256 received = erc20.balanceOf(address(this)) - before;
        _balances[payer][token][processor] += received;
        emit Deposited(payer, token, processor, msg.sender, received);
    }

    /// @dev Runs _debit over the intent windows, strictly ascending by (intentId, window); returns their
    ///      commitments, the total debited and the number of nonces settled.
    function _debitAll(IntentSettlement[] calldata intents, address asset, uint64 timeRef)
        private
        returns (uint256[] memory commitments, uint256 total, uint256 mandates)
    {
        uint256 n = intents.length;
        commitments = new uint256[](n);
        bytes32 previousId;
        uint256 previousWindow;
        for (uint256 i; i < n; ++i) {
            IntentSettlement calldata s = intents[i];
            if (i != 0 && (s.intentId < previousId || (s.intentId == previousId && s.window <= previousWindow))) {
                revert Settlement__UnsortedIntents();
            }
            previousId = s.intentId;
            previousWindow = s.window;
            commitments[i] = _debit(s, asset, timeRef);
            total += s.total;
            mandates += _popcount(s.nonces);
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

    /// @dev Checks one intent window against its stored intent and applies its effects (nonce bits, spent,
    ///      payer debit). Returns the intent's commitment for the public inputs.
    function _debit(IntentSettlement calldata s, address asset, uint64 timeRef) private returns (uint256) {
        StoredIntent memory record = _intents[s.intentId];
        if (record.payer == address(0)) revert Settlement__UnknownIntent();
        if (record.revokedAt != 0 && block.timestamp >= uint256(record.revokedAt) + _SETTLEMENT_WINDOW) {
            revert Settlement__IntentRevoked();
        }
        if (record.asset != asset) revert Settlement__AssetMismatch();
        if (timeRef < record.validAfter) revert Settlement__IntentNotYetValid();
        if (timeRef >= record.validBefore) revert Settlement__IntentExpired();
        if (record.processor != msg.sender || block.timestamp >= _consentUntil[record.payer][msg.sender]) {
            revert Settlement__UnauthorizedProcessor();
        }
        if (s.nonces == 0) revert Settlement__ZeroCount();
        if (s.window >= _WINDOW_LIMIT) revert Settlement__NonceOutOfRange();
        if (s.total >= _TOTAL_LIMIT) revert Settlement__AmountOutOfRange();
        uint256 spent = uint256(record.spent) + s.total;
        if (spent > record.maxAmount) revert Settlement__IntentBudgetExceeded();
        uint256 balance = _balances[record.payer][asset][msg.sender];
        if (balance < s.total) revert Settlement__InsufficientBalance();

        uint256 bits = uint256(s.nonces) << ((s.window & 1) * 128);
        mapping(uint256 => uint256) storage words = _nonceWords[s.intentId];
        uint256 index = s.window >> 1;
        uint256 word = _nonceWord(words, index);
        if (word & bits != 0) revert Settlement__NonceAlreadySettled();
        word |= bits;
        words[index] = index == 0 ? ~word : word;
        // casting to uint96 is safe because spent <= record.maxAmount, a uint96
        // forge-lint: disable-next-line(unsafe-typecast)
        _intents[s.intentId].spent = uint96(spent);
        unchecked {
            _balances[record.payer][asset][msg.sender] = balance - s.total;
        }
        emit IntentSettled(s.intentId, record.payer, s.window, s.nonces, s.total);
        return record.commitment;
    }

    /// @dev The verifier's public signals, in the order of PROTOCOL.md §5:
    ///      [0]          timeRef
    ///      [1 + s]      commitment of intent slot s                   (0: unused slot)
    ///      [1 + I + s]  window | nonces<<33 | total<<161              (0: unused slot)
    ///      [1 + 2I + k] payee | amount<<160                           (0: unused slot)
    function _publicInputs(
        uint64 timeRef,
        IntentSettlement[] calldata intents,
        Payout[] calldata payouts,
        uint256[] memory commitments
    ) private view returns (uint256[] memory pub) {
        uint256 slotsI = _INTENT_SLOTS;
        pub = new uint256[](1 + 2 * slotsI + _PAYEE_SLOTS);
        pub[0] = timeRef;
        for (uint256 s; s < commitments.length; ++s) {
            IntentSettlement calldata it = intents[s];
            pub[1 + s] = commitments[s];
            pub[1 + slotsI + s] = uint256(it.window) | (uint256(it.nonces) << 33) | (uint256(it.total) << 161);
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

    /// @dev The settled-nonce bitmap of word `index` (word 0 is stored inverted).
    function _nonceWord(mapping(uint256 => uint256) storage words, uint256 index) private view returns (uint256) {
        uint256 stored = words[index];
        return index == 0 ? ~stored : stored;
    }

    /// @dev Number of set bits (SWAR popcount).
    function _popcount(uint128 bits) private pure returns (uint256 count) {
        uint256 x = bits;
        x = x - ((x >> 1) & 0x55555555555555555555555555555555);
        x = (x & 0x33333333333333333333333333333333) + ((x >> 2) & 0x33333333333333333333333333333333);
        x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f;
        count = (x * 0x01010101010101010101010101010101) >> 120 & 0xff;
    }

    function _structHash(Intent calldata intent) private pure returns (bytes32) {
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
                intent.payeesRoot,
                intent.processor,
                intent.salt
            )
        );
    }
}
