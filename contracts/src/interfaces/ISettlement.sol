// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/// @title ISettlement
/// @notice Escrow debit wallet and batch settlement entry point of the AEP2 deferred-payment protocol.
/// @dev The normative encodings (Intent typed data, nonces, batch public inputs, settleBatch calldata)
///      are specified in docs/PROTOCOL.md §2, §3 and §5.
interface ISettlement {
    /*//////////////////////////////////////////////////////////////
                                 STRUCTS
    //////////////////////////////////////////////////////////////*/

    /// @notice A spending intent, signed by the payer as EIP-712 typed data (PROTOCOL.md §2).
    /// @param payer Account whose escrow balance is debited; the EIP-712 signer.
    /// @param asset ERC-20 token the intent pays in.
    /// @param sessionKeyHash Poseidon(Ax, Ay) of the BabyJubJub session key that signs mandates; in (0, r).
    /// @param maxAmount Budget over the intent's lifetime, in token base units (non-zero).
    /// @param maxPerPayment Largest single mandate, in token base units (non-zero).
    /// @param validAfter First unix second at which the intent may be settled (inclusive, < 2^32).
    /// @param validBefore Unix second from which the intent can no longer be settled (exclusive).
    /// @param payeesRoot Poseidon Merkle root of the allowed payees (PROTOCOL.md §2); 0 means any payee.
    /// @param processor The one settlement processor that may settle this intent (non-zero).
    /// @param salt Free entropy distinguishing otherwise equal intents.
    struct Intent {
        address payer;
        address asset;
        uint256 sessionKeyHash;
        uint256 maxAmount;
        uint256 maxPerPayment;
        uint64 validAfter;
        uint64 validBefore;
        uint256 payeesRoot;
        address processor;
        bytes32 salt;
    }

    /// @notice A registered intent as stored on chain.
    /// @param payer Account whose escrow balance is debited (address(0): not registered).
    /// @param asset ERC-20 token the intent pays in.
    /// @param sessionKeyHash Poseidon hash of the session public key.
    /// @param maxAmount Lifetime budget, saturated at 2^96 - 1.
    /// @param maxPerPayment Per-mandate cap as used by the circuit: min(signed maxPerPayment, 2^64 - 1).
    /// @param validAfter First settleable time reference (inclusive).
    /// @param validBefore First time reference at which the intent is expired (saturated at 2^32 - 1).
    /// @param payeesRoot Allowlist root as signed (0: any payee).
    /// @param processor The processor that may settle the intent.
    /// @param spent Amount settled so far; never exceeds maxAmount.
    /// @param revokedAt When the payer revoked the intent (0: not revoked); settleable until
    ///        revokedAt + settlementWindow.
    /// @param commitment Poseidon(uint256(intentId) >> 8, sessionKeyHash, payeesRoot, maxPerPayment): the
    ///        intent as the circuit opens it.
    struct IntentRecord {
        address payer;
        address asset;
        uint256 sessionKeyHash;
        uint96 maxAmount;
        uint64 maxPerPayment;
        uint64 validAfter;
        uint64 validBefore;
        uint256 payeesRoot;
        address processor;
        uint96 spent;
        uint64 revokedAt;
        uint256 commitment;
    }

    /// @notice What one batch settles for one window of 128 nonces of one intent.
    /// @param intentId EIP-712 digest of the intent.
    /// @param window Nonce window: the settled nonces are window * 128 + k for each bit k of `nonces`
    ///        (< 2^33).
    /// @param nonces Bitmap of the nonces settled (non-zero); none may have been settled before.
    /// @param total Sum of the settled mandate amounts (< 2^88).
    struct IntentSettlement {
        bytes32 intentId;
        uint64 window;
        uint128 nonces;
        uint96 total;
    }

    /// @notice One transfer out of escrow to a payee.
    /// @param payee Recipient (non-zero).
    /// @param amount Amount in token base units (< 2^93).
    struct Payout {
        address payee;
        uint96 amount;
    }

    /// @notice A settlement batch, proven by one Groth16 proof (PROTOCOL.md §5).
    /// @param asset Token every intent of the batch pays in.
    /// @param timeRef Time reference of the proof: block.timestamp - settlementWindow < timeRef <= block.timestamp.
    /// @param intents Settled intent windows, strictly ascending by (intentId, window).
    /// @param payouts Payee transfers; their sum equals the sum of the intents' totals.
    struct Batch {
        address asset;
        uint64 timeRef;
        IntentSettlement[] intents;
        Payout[] payouts;
    }

    /// @notice A pending two-step withdrawal.
    /// @param amount Requested amount (paid as min(amount, balance) on execution).
    /// @param readyAt Earliest execution time.
    struct Withdrawal {
        uint192 amount;
        uint64 readyAt;
    }

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    /// @dev Constructor arguments are out of range: a verifier without a batch shape, zero or too many
    ///      slots, another payee tree depth, a zero settlement window or a withdrawal delay shorter than it.
    error Settlement__InvalidConfig();
    /// @dev The verifier's keys come from the unsafe single-party development setup and this is not a
    ///      development chain (chain id 31337 or 1337).
    error Settlement__DevelopmentVerifier();
    /// @dev An amount argument is zero where a positive amount is required.
    error Settlement__ZeroAmount();
    /// @dev An address argument is zero where an account is required.
    error Settlement__ZeroAddress();
    /// @dev The payer's escrow balance does not cover the withdrawal request or the settled total.
    error Settlement__InsufficientBalance();
    /// @dev executeWithdrawal or cancelWithdrawal without a pending request.
    error Settlement__NoWithdrawalPending();
    /// @dev executeWithdrawal before the request's readyAt.
    error Settlement__WithdrawalNotReady();
    /// @dev The intent's payeesRoot is not below the BN254 scalar field modulus.
    error Settlement__InvalidPayeesRoot();
    /// @dev The session key hash is 0 or not below the BN254 scalar field modulus.
    error Settlement__InvalidSessionKey();
    /// @dev An intent with this id is already registered.
    error Settlement__IntentExists();
    /// @dev validBefore <= validAfter, or validAfter >= 2^32 - 1.
    error Settlement__InvalidValidityWindow();
    /// @dev maxPerPayment is zero.
    error Settlement__ZeroMaxPerPayment();
    /// @dev maxAmount is zero.
    error Settlement__ZeroMaxAmount();
    /// @dev The intent signature is malformed, has a high s, or does not recover the payer.
    error Settlement__InvalidSignature();
    /// @dev The caller is not the payer of the intent.
    error Settlement__NotPayer();
    /// @dev The batch settles no intent.
    error Settlement__EmptyBatch();
    /// @dev The batch has more intents or payouts than the circuit has slots.
    error Settlement__BatchTooLarge();
    /// @dev The batch's time reference is later than the current block.
    error Settlement__TimeRefInFuture();
    /// @dev The batch's time reference is settlementWindow seconds or more before the current block.
    error Settlement__TimeRefTooOld();
    /// @dev The batch's (intentId, window) pairs are not strictly ascending.
    error Settlement__UnsortedIntents();
    /// @dev The intent id is not registered.
    error Settlement__UnknownIntent();
    /// @dev The intent was revoked by its payer more than settlementWindow seconds ago.
    error Settlement__IntentRevoked();
    /// @dev The intent pays in another asset than the batch.
    error Settlement__AssetMismatch();
    /// @dev The batch's time reference is before the intent's validAfter.
    error Settlement__IntentNotYetValid();
    /// @dev The batch's time reference is at or after the intent's validBefore, or a new intent's
    ///      validBefore has passed.
    error Settlement__IntentExpired();
    /// @dev An intent settlement settles no nonce (nonces == 0).
    error Settlement__ZeroCount();
    /// @dev A nonce of the intent settlement was settled before (e.g. a replayed batch).
    error Settlement__NonceAlreadySettled();
    /// @dev The nonce window is >= 2^33 (nonces are below 2^40).
    error Settlement__NonceOutOfRange();
    /// @dev An intent total (>= 2^88) or payout amount (>= 2^93) exceeds the public-input field width.
    error Settlement__AmountOutOfRange();
    /// @dev Settling the total would take the intent's spent above its maxAmount.
    error Settlement__IntentBudgetExceeded();
    /// @dev The caller is not the processor the intent names, or the payer's consent to it has lapsed.
    error Settlement__UnauthorizedProcessor();
    /// @dev A payout goes to address(0).
    error Settlement__InvalidPayee();
    /// @dev The payouts do not sum to the intents' totals.
    error Settlement__UnbalancedBatch();
    /// @dev The verifier rejected the proof, reverted, or returned malformed data.
    error Settlement__InvalidProof();

    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @dev Emitted when escrow is credited.
    /// @param payer Account credited.
    /// @param token Token deposited.
    /// @param processor Processor whose settlements may debit it.
    /// @param from Account the tokens came from.
    /// @param amount Amount credited (tokens actually received).
    event Deposited(
        address indexed payer, address indexed token, address indexed processor, address from, uint256 amount
    );

    /// @dev Emitted when a payer requests a withdrawal.
    /// @param payer Requesting payer.
    /// @param token Token to withdraw.
    /// @param processor Processor whose escrow account it leaves.
    /// @param amount Requested amount.
    /// @param readyAt Earliest execution time.
    event WithdrawalRequested(
        address indexed payer, address indexed token, address indexed processor, uint256 amount, uint64 readyAt
    );

    /// @dev Emitted when a withdrawal is executed.
    /// @param payer Payer paid out.
    /// @param token Token paid.
    /// @param processor Processor whose escrow account it left.
    /// @param amount Amount paid: min(requested, balance at execution).
    event WithdrawalExecuted(address indexed payer, address indexed token, address indexed processor, uint256 amount);

    /// @dev Emitted when a payer cancels a pending withdrawal.
    /// @param payer Payer cancelling.
    /// @param token Token of the cancelled request.
    /// @param processor Processor of the cancelled request.
    event WithdrawalCancelled(address indexed payer, address indexed token, address indexed processor);

    /// @dev Emitted when a payer authorises or de-authorises a processor.
    /// @param payer Payer granting or revoking.
    /// @param processor Processor concerned.
    /// @param allowed New authorisation state.
    /// @param until Consent holds while block.timestamp < until (2^64 - 1 while allowed; a de-authorisation
    ///        lets the processor settle for settlementWindow more seconds).
    event ProcessorSet(address indexed payer, address indexed processor, bool allowed, uint64 until);

    /// @dev Emitted when an intent is registered.
    /// @param intentId EIP-712 digest of the intent.
    /// @param payer Signing payer.
    /// @param asset Token the intent pays in.
    /// @param sessionKeyHash Poseidon hash of the session key bound to the intent.
    event IntentRegistered(
        bytes32 indexed intentId, address indexed payer, address indexed asset, uint256 sessionKeyHash
    );

    /// @dev Emitted when a payer revokes an intent.
    /// @param intentId Revoked intent.
    /// @param payer Its payer.
    /// @param settleableUntil Batches settle its mandates until this time (revokedAt + settlementWindow).
    event IntentRevoked(bytes32 indexed intentId, address indexed payer, uint64 settleableUntil);

    /// @dev Emitted once per intent window settled in a batch.
    /// @param intentId Settled intent.
    /// @param payer Payer debited.
    /// @param window Nonce window (nonces window * 128 + k).
    /// @param nonces Bitmap of the nonces settled.
    /// @param total Amount debited.
    event IntentSettled(bytes32 indexed intentId, address indexed payer, uint64 window, uint128 nonces, uint96 total);

    /// @dev Emitted once per payout of a batch.
    /// @param payee Recipient.
    /// @param asset Token paid.
    /// @param amount Amount paid.
    event PayoutSent(address indexed payee, address indexed asset, uint96 amount);

    /// @dev Emitted once per settled batch.
    /// @param processor Caller that submitted the batch.
    /// @param asset Token settled.
    /// @param timeRef Time reference of the proof.
    /// @param mandates Number of nonces settled.
    /// @param total Sum of the intents' totals (== sum of payouts).
    event BatchSettled(
        address indexed processor, address indexed asset, uint64 timeRef, uint256 mandates, uint256 total
    );

    /*//////////////////////////////////////////////////////////////
                                 ESCROW
    //////////////////////////////////////////////////////////////*/

    /// @notice Pulls `amount` of `token` from the caller into the caller's escrow with `processor`.
    /// @dev Escrow is per (payer, token, processor): only that processor's settlements debit it.
    function deposit(address token, address processor, uint256 amount) external;

    /// @notice Pulls `amount` of `token` from the caller into `payer`'s escrow with `processor`.
    function depositFor(address payer, address token, address processor, uint256 amount) external;

    /// @notice Approves via EIP-2612 permit, then deposits for the caller with `processor`.
    function depositWithPermit(
        address token,
        address processor,
        uint256 amount,
        uint256 deadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external;

    /// @notice Escrowed balance of `payer` in `token` with `processor` (still debitable by its settlements).
    function balanceOf(address payer, address token, address processor) external view returns (uint256);

    /// @notice Starts a withdrawal of `amount` (<= balance) from the escrow with `processor`, executable
    ///         after the withdrawal delay (>= settlementWindow).
    /// @dev Replaces any pending request for the same token and processor and restarts its delay.
    function requestWithdrawal(address token, address processor, uint256 amount) external;

    /// @notice Pays out min(requested, balance) of a matured request.
    /// @return paid Amount transferred to the caller.
    function executeWithdrawal(address token, address processor) external returns (uint256 paid);

    /// @notice Cancels the caller's pending withdrawal of `token` from the escrow with `processor`.
    function cancelWithdrawal(address token, address processor) external;

    /// @notice Pending withdrawal of `payer` in `token` with `processor` (amount 0: none).
    function pendingWithdrawal(address payer, address token, address processor)
        external
        view
        returns (Withdrawal memory);

    /*//////////////////////////////////////////////////////////////
                               PROCESSORS
    //////////////////////////////////////////////////////////////*/

    /// @notice Authorises (or de-authorises) `processor` to settle the caller's intents.
    /// @dev A de-authorisation takes effect settlementWindow seconds later, so mandates the processor's
    ///      gateways already served still settle.
    function setProcessor(address processor, bool allowed) external;

    /// @notice Whether `processor` may settle `payer`'s intents now.
    function isProcessor(address payer, address processor) external view returns (bool);

    /// @notice When `payer`'s consent to `processor` lapses (0: never given; 2^64 - 1: not withdrawn).
    function processorConsentUntil(address payer, address processor) external view returns (uint64);

    /*//////////////////////////////////////////////////////////////
                                 INTENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice Registers an intent signed by its payer; callable by anyone (e.g. a relayer).
    /// @return intentId The intent's EIP-712 digest.
    function registerIntent(Intent calldata intent, bytes calldata signature) external returns (bytes32 intentId);

    /// @notice Revokes an intent; only its payer may call. Batches settle its mandates for settlementWindow
    ///         more seconds (they were served against it); a second call does not extend that.
    function revokeIntent(bytes32 intentId) external;

    /// @notice The stored intent (payer == address(0) if unknown).
    function getIntent(bytes32 intentId) external view returns (IntentRecord memory);

    /// @notice EIP-712 digest (= intent id) of `intent` under this contract's domain.
    function intentDigest(Intent calldata intent) external view returns (bytes32);

    /// @notice Bitmap of the settled nonces window * 128 .. window * 128 + 127 of an intent.
    function settledNonces(bytes32 intentId, uint64 window) external view returns (uint128);

    /*//////////////////////////////////////////////////////////////
                               SETTLEMENT
    //////////////////////////////////////////////////////////////*/

    /// @notice Verifies a Groth16 proof over the batch and pays it out of escrow.
    /// @param proof Proof words a0, a1, b00, b01, b10, b11, c0, c1.
    /// @param batch The batch (PROTOCOL.md §5).
    function settleBatch(uint256[8] calldata proof, Batch calldata batch) external;

    /// @notice The public inputs settleBatch would pass to the verifier for `batch` in the current state.
    /// @dev For off-chain cross-checks; performs no validation.
    function publicInputs(Batch calldata batch) external view returns (uint256[] memory);

    /*//////////////////////////////////////////////////////////////
                             CONFIGURATION
    //////////////////////////////////////////////////////////////*/

    /// @notice Groth16 verifier contract.
    function verifier() external view returns (address);

    /// @notice Intent slots I of the circuit.
    function intentSlots() external view returns (uint256);

    /// @notice Payee slots P of the circuit.
    function payeeSlots() external view returns (uint256);

    /// @notice Seconds between requestWithdrawal and executeWithdrawal (>= settlementWindow).
    function withdrawalDelay() external view returns (uint64);

    /// @notice Seconds a served mandate has to settle: the largest lag of a batch's time reference behind
    ///         the block, and the grace after a revocation or de-authorisation.
    function settlementWindow() external view returns (uint64);

    /// @notice Mandate slots N of the verifier's circuit.
    function batchSize() external view returns (uint256);
}
