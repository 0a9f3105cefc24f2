// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../src/MockUSDC.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {ExpectingVerifier} from "./mocks/ExpectingVerifier.sol";
import {SettlementBase} from "./utils/SettlementBase.sol";
import {Test} from "./utils/Test.sol";

/// @notice Plays three payers and two processors, P and Q, against the handler, which is also the processors'
///         gateways: payers deposit into and withdraw from their escrow account with each processor (and with
///         a third, foreign one that never settles), register and revoke intents naming any of the three, and
///         grant or withdraw consent; each processor's gateway serves mandates of intents naming it, against
///         the payer's account with it, and the processor settles (and replays) them. Either processor also
///         tries to settle the other's batches, which must never succeed. Ghost state records, per
///         (payer, processor) account, what was deposited, debited and withdrawn, and what was served and
///         settled.
/// @dev Serving follows what a gateway checks before it answers (PROTOCOL.md §7): the mandate's nonces are
///      fresh for the intent, and the payer's escrow with the serving processor and the intent's budget not
///      yet promised to earlier mandates cover it. The escrow a gateway may promise excludes the account's
///      pending withdrawal, which may execute inside the window; a request made after serving waits
///      withdrawalDelay >= settlementWindow. A batch served while the intent was live (named the serving
///      processor, valid, not revoked, consent not withdrawn) and submitted before servedAt +
///      settlementWindow must settle, whatever the payer and the other processor did meanwhile: any revert
///      is a guarantee violation. Every other batch is attempted too, and may fail. The test verifier is
///      armed with the contract's own public inputs (their encoding is pinned by the unit tests). Time is
///      kept here and re-applied at every call, so it never depends on the fuzzer carrying vm.warp from call
///      to call.
contract SettlementHandler is Test {
    /// @dev A batch a gateway of processor `by` served: one or two windows of one intent, paid to both payees.
    struct Served {
        uint256 intent;
        uint256 by;
        uint64 servedAt;
        bool guaranteed;
        uint256 slots;
        uint64[2] windows;
        uint128[2] nonces;
        uint96[2] totals;
        uint96 toFirstPayee;
        /// @dev What the other processor had debited from the payer when this was served.
        uint256 otherDebitedAtServe;
    }

    struct Intent {
        bytes32 id;
        uint256 payer;
        uint256 processor;
    }

    struct NonceKey {
        bytes32 id;
        uint64 window;
    }

    /// @notice Processors 0 (P) and 1 (Q) serve and settle; processor 2 is named and funded, never settles.
    uint256 public constant PROCESSORS = 3;
    uint256 internal constant SETTLING = 2;
    uint256 internal constant FOREIGN = 2;
    uint256 internal constant MAX_INTENTS = 12;
    uint256 internal constant MAX_PENDING = 8;
    uint256 internal constant MAX_HISTORY = 8;
    uint256 internal constant MAX_AMOUNT = 1e12;
    uint64 internal constant LAST_WINDOW = 2 ** 33 - 1;
    uint256 internal constant FIELD_MODULUS =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;

    Settlement internal immutable settlement;
    MockUSDC internal immutable usdc;
    ExpectingVerifier internal immutable verifier;
    uint64 internal immutable window;

    address[PROCESSORS] public processors;
    address[] public payers;
    uint256[] internal keys;
    address[2] internal payees;
    Intent[] public intents;
    Served[] internal pending;
    Served[] internal history;
    NonceKey[] internal keysTouched;
    mapping(bytes32 id => mapping(uint64 window => bool)) internal touched;

    /// @notice Current time of the run (re-applied with vm.warp at every call).
    uint256 public time;

    uint256 public ghostDeposits;
    uint256 public ghostPayouts;
    uint256 public ghostWithdrawn;
    /// @notice Per (payer, processor) account: credited by deposits, debited by settlements, paid out.
    mapping(uint256 payer => mapping(uint256 processor => uint256)) public ghostDeposited;
    mapping(uint256 payer => mapping(uint256 processor => uint256)) public ghostDebited;
    mapping(uint256 payer => mapping(uint256 processor => uint256)) public ghostWithdrawnFrom;
    mapping(bytes32 id => uint256) public ghostSpent;
    /// @notice OR of every bitmap settled, per intent window (only ever grows).
    mapping(bytes32 id => mapping(uint64 window => uint128)) public ghostSettled;
    /// @dev Nonces served and not yet settled or dropped, per intent window (a gateway never re-serves them).
    mapping(bytes32 id => mapping(uint64 window => uint128)) internal claimed;
    mapping(uint256 payer => mapping(uint256 processor => uint256)) internal reservedEscrow;
    mapping(bytes32 id => uint256) internal reservedBudget;

    uint256 public guaranteeViolations;
    bytes public lastViolation;
    uint256 public replaysSettled;
    /// @notice Batches that settled when submitted by a processor other than the one that served them.
    uint256 public crossSettled;
    uint256[SETTLING] public guaranteedSettled;
    /// @notice Guaranteed batches that settled after the other processor debited the same payer since they
    ///         were served (coverage of the two-processor race, not asserted).
    uint256 public settledAfterOtherDebit;
    /// @notice Guaranteed batches that settled after their intent's revocation (coverage, not asserted).
    uint256 public settledAfterRevocation;
    /// @notice Guaranteed batches that settled after the payer withdrew consent (coverage, not asserted).
    uint256 public settledAfterDeauthorisation;
    uint256 public otherAttempts;
    uint256 internal salts;
    uint256 internal proofs;

    modifier atTime() {
        vm.warp(time);
        _;
    }

    constructor(Settlement settlement_, MockUSDC usdc_, ExpectingVerifier verifier_) {
        settlement = settlement_;
        usdc = usdc_;
        verifier = verifier_;
        window = settlement_.settlementWindow();
        processors = [address(0x9001), address(0x9002), address(0xF0E1)];
        payees = [address(0xBEEF01), address(0xBEEF02)];
        time = block.timestamp;
    }

    function addPayer(address payer, uint256 key) external {
        payers.push(payer);
        keys.push(key);
    }

    /*//////////////////////////////////////////////////////////////
                                 VIEWS
    //////////////////////////////////////////////////////////////*/

    function payerCount() external view returns (uint256) {
        return payers.length;
    }

    function intentCount() external view returns (uint256) {
        return intents.length;
    }

    function nonceKeyCount() external view returns (uint256) {
        return keysTouched.length;
    }

    function nonceKey(uint256 i) external view returns (bytes32, uint64) {
        return (keysTouched[i].id, keysTouched[i].window);
    }

    /// @notice Escrow of `payer`'s account with `processor` promised to served batches whose settlement window
    ///         is still open.
    function liveReserved(uint256 payer, uint256 processor) external view returns (uint256 sum) {
        for (uint256 k; k < pending.length; ++k) {
            Served storage s = pending[k];
            if (intents[s.intent].payer == payer && s.by == processor && time < s.servedAt + window) {
                sum += s.totals[0] + s.totals[1];
            }
        }
    }

    /*//////////////////////////////////////////////////////////////
                                 PAYERS
    //////////////////////////////////////////////////////////////*/

    function deposit(uint256 actor, uint256 processor, uint256 amount) public atTime {
        uint256 payer = actor % payers.length;
        uint256 p = processor % PROCESSORS;
        amount = bound(amount, 1, MAX_AMOUNT);
        usdc.mint(payers[payer], amount);
        vm.startPrank(payers[payer]);
        usdc.approve(address(settlement), amount);
        settlement.deposit(address(usdc), processors[p], amount);
        vm.stopPrank();
        ghostDeposits += amount;
        ghostDeposited[payer][p] += amount;
    }

    /// @param servedOne Act on the account of a batch a gateway served and has not settled yet.
    /// @dev Even seeds withdraw everything: the payer racing the processor for its escrow.
    function requestWithdrawal(uint256 actor, uint256 processor, uint256 amount, bool servedOne) external atTime {
        (uint256 payer, uint256 p) = _account(actor, processor, servedOne);
        uint256 balance = settlement.balanceOf(payers[payer], address(usdc), processors[p]);
        if (balance == 0) return;
        vm.prank(payers[payer]);
        settlement.requestWithdrawal(
            address(usdc), processors[p], amount % 2 == 0 ? balance : bound(amount, 1, balance)
        );
    }

    /// @param waitUntilReady Jump to readyAt when the request is not ready yet (else do nothing).
    /// @param servedOne Act on the account of a batch a gateway served and has not settled yet.
    function executeWithdrawal(uint256 actor, uint256 processor, bool waitUntilReady, bool servedOne) external atTime {
        (uint256 payer, uint256 p) = _account(actor, processor, servedOne);
        ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(payers[payer], address(usdc), processors[p]);
        if (w.amount == 0) return;
        if (time < w.readyAt) {
            if (!waitUntilReady) return;
            time = w.readyAt;
            vm.warp(time);
        }
        vm.prank(payers[payer]);
        uint256 paid = settlement.executeWithdrawal(address(usdc), processors[p]);
        ghostWithdrawn += paid;
        ghostWithdrawnFrom[payer][p] += paid;
    }

    function cancelWithdrawal(uint256 actor, uint256 processor) external atTime {
        (uint256 payer, uint256 p) = _account(actor, processor, false);
        if (settlement.pendingWithdrawal(payers[payer], address(usdc), processors[p]).amount == 0) return;
        vm.prank(payers[payer]);
        settlement.cancelWithdrawal(address(usdc), processors[p]);
    }

    /// @dev Session key hashes come from a set of three, so intents share keys; one in five names the foreign
    ///      processor, the rest P or Q.
    function registerIntent(uint256 actor, uint256 seed) external {
        uint256 pick = seed % 5;
        registerIntentNaming(actor, pick == 0 ? FOREIGN : pick % 2, seed);
    }

    /// @dev Registers an intent of payer `actor` naming processor `processor` (also used by setUp).
    function registerIntentNaming(uint256 actor, uint256 processor, uint256 seed) public atTime {
        if (intents.length >= MAX_INTENTS) return;
        uint256 payer = actor % payers.length;
        uint256 p = processor % PROCESSORS;
        ISettlement.Intent memory intent = ISettlement.Intent({
            payer: payers[payer],
            asset: address(usdc),
            sessionKeyHash: 1 + seed % 3,
            maxAmount: bound(seed >> 8, 1, 4 * MAX_AMOUNT),
            maxPerPayment: bound(seed >> 64, 1, type(uint128).max),
            validAfter: uint64(time - 1 hours),
            validBefore: uint64(time + bound(seed >> 128, 1, 10 days)),
            payeesRoot: (seed >> 200) % 2 == 0 ? 0 : uint256(keccak256(abi.encode(seed))) % FIELD_MODULUS,
            processor: processors[p],
            salt: bytes32(++salts)
        });
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(keys[payer], settlement.intentDigest(intent));
        intents.push(Intent(settlement.registerIntent(intent, abi.encodePacked(r, s, v)), payer, p));
    }

    /// @param servedOne Revoke the intent of a batch a gateway served and has not settled yet.
    function revokeIntent(uint256 index, bool servedOne) external atTime {
        if (intents.length == 0) return;
        Intent memory it =
            intents[servedOne && pending.length != 0 ? pending[index % pending.length].intent : index % intents.length];
        vm.prank(payers[it.payer]);
        settlement.revokeIntent(it.id);
    }

    /// @param servedOne Act as the payer of a batch a gateway served and has not settled yet, towards its
    ///        serving processor.
    function setProcessor(uint256 actor, uint256 processor, bool allowed, bool servedOne) external atTime {
        (uint256 payer, uint256 p) = _account(actor, processor, servedOne);
        vm.prank(payers[payer]);
        settlement.setProcessor(processors[p], allowed);
    }

    function warp(uint256 seconds_) external atTime {
        time += bound(seconds_, 0, window);
        vm.warp(time);
    }

    /*//////////////////////////////////////////////////////////////
                            GATEWAYS / PROCESSORS
    //////////////////////////////////////////////////////////////*/

    /// @notice A gateway serves one or two windows of fresh nonces of an intent, promising the escrow of the
    ///         payer's account with its processor, and the intent's budget. Intents naming P or Q are served
    ///         by that processor's gateway; a foreign intent by P's or Q's (never guaranteed).
    function serve(uint256 index, uint256 windowSeed, uint256 bitsSeed, uint256 amount, bool twoWindows)
        external
        atTime
    {
        if (intents.length == 0 || pending.length >= MAX_PENDING) return;
        Served memory s;
        s.intent = index % intents.length;
        s.servedAt = uint64(time);
        bytes32 id = intents[s.intent].id;
        uint256 payer = intents[s.intent].payer;
        s.by = intents[s.intent].processor;
        if (s.by == FOREIGN) s.by = (windowSeed >> 200) % SETTLING;

        s.windows[0] = _pickWindow(windowSeed);
        s.nonces[0] = _freshNonces(bitsSeed, claimed[id][s.windows[0]]);
        if (s.nonces[0] == 0) return; // the window is full
        s.slots = 1;
        if (twoWindows && s.windows[0] < LAST_WINDOW) {
            s.windows[1] = s.windows[0] + 1 + uint64((windowSeed >> 64) % 2);
            if (s.windows[1] > LAST_WINDOW) s.windows[1] = LAST_WINDOW;
            s.nonces[1] = _freshNonces(bitsSeed >> 128, claimed[id][s.windows[1]]);
            if (s.nonces[1] != 0) s.slots = 2;
        }

        ISettlement.IntentRecord memory rec = settlement.getIntent(id);
        uint256 promisable = _promisable(payer, s.by, id, rec);
        // One serve in four promises everything left: the payer's account with this processor runs dry.
        uint256 total = amount % 4 == 0 ? promisable : bound(amount, 0, promisable);
        s.totals[0] = uint96(s.slots == 2 ? bound(amount >> 128, 0, total) : total);
        s.totals[1] = uint96(total - s.totals[0]);
        s.toFirstPayee = uint96(bound(bitsSeed >> 64, 0, total));
        s.guaranteed = rec.processor == processors[s.by] && rec.revokedAt == 0
            && settlement.processorConsentUntil(payers[payer], processors[s.by]) == type(uint64).max
            && rec.validAfter <= time && time < rec.validBefore;
        s.otherDebitedAtServe = ghostDebited[payer][1 - s.by];

        reservedEscrow[payer][s.by] += total;
        reservedBudget[id] += total;
        for (uint256 k; k < s.slots; ++k) {
            claimed[id][s.windows[k]] |= s.nonces[k];
        }
        pending.push(s);
    }

    /// @notice The serving processors submit up to three served batches, one by one (timeRef = serve time).
    function settle(uint256 index, uint256 count) external atTime {
        count = bound(count, 1, 3);
        for (uint256 k; k < count && pending.length != 0; ++k) {
            _settle(index % pending.length);
        }
    }

    /// @notice Its processor resubmits a settled batch with a fresh time reference and a proof the verifier
    ///         accepts: only the nonce bitmap stands in the way, so it must never settle.
    function replay(uint256 index) external atTime {
        if (history.length == 0) return;
        Served memory s = history[index % history.length];
        (bool ok,) = _submit(s, processors[s.by], uint64(time));
        if (ok) ++replaysSettled;
    }

    /// @notice The other processor submits a batch served by one (still pending, or settled), with a proof
    ///         the verifier accepts, at the serve time or now: it must never settle, so it never debits an
    ///         account other than its own.
    function crossSettle(uint256 index, bool settled, bool fresh) external atTime {
        Served[] storage list = settled ? history : pending;
        if (list.length == 0) return;
        Served memory s = list[index % list.length];
        uint64 timeRef = fresh || settled ? uint64(time) : s.servedAt;
        (bool ok,) = _submit(s, processors[1 - s.by], timeRef);
        if (ok) ++crossSettled;
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    /// @dev Submits pending[index] as its serving processor, records the outcome and drops it.
    function _settle(uint256 index) internal {
        Served memory s = pending[index];
        pending[index] = pending[pending.length - 1];
        pending.pop();

        bytes32 id = intents[s.intent].id;
        uint256 payer = intents[s.intent].payer;
        uint256 total = uint256(s.totals[0]) + s.totals[1];
        reservedEscrow[payer][s.by] -= total;
        reservedBudget[id] -= total;

        bool inWindow = time < uint256(s.servedAt) + window;
        bool revoked = settlement.getIntent(id).revokedAt != 0;
        bool deauthorised = settlement.processorConsentUntil(payers[payer], processors[s.by]) != type(uint64).max;
        bool otherDebited = ghostDebited[payer][1 - s.by] > s.otherDebitedAtServe;
        (bool ok, bytes memory reason) = _submit(s, processors[s.by], s.servedAt);
        if (ok) {
            ghostPayouts += total;
            ghostDebited[payer][s.by] += total;
            ghostSpent[id] += total;
            for (uint256 k; k < s.slots; ++k) {
                _touch(id, s.windows[k]);
                ghostSettled[id][s.windows[k]] |= s.nonces[k];
            }
            if (history.length < MAX_HISTORY) history.push(s);
            else history[proofs % MAX_HISTORY] = s;
        } else {
            for (uint256 k; k < s.slots; ++k) {
                claimed[id][s.windows[k]] &= ~s.nonces[k]; // never settled: free again
            }
        }
        if (s.guaranteed && inWindow) {
            if (ok) {
                ++guaranteedSettled[s.by];
                if (otherDebited) ++settledAfterOtherDebit;
                if (revoked) ++settledAfterRevocation;
                if (deauthorised) ++settledAfterDeauthorisation;
            } else {
                ++guaranteeViolations;
                lastViolation = reason;
            }
        } else {
            ++otherAttempts;
        }
    }

    /// @dev A (payer, processor) account: the payer and serving processor of a pending served batch if
    ///      `servedOne` and there is one, else any payer with any of the three processors.
    function _account(uint256 seed, uint256 processor, bool servedOne) internal view returns (uint256, uint256) {
        if (servedOne && pending.length != 0) {
            Served storage s = pending[seed % pending.length];
            return (intents[s.intent].payer, s.by);
        }
        return (seed % payers.length, processor % PROCESSORS);
    }

    function _submit(Served memory s, address submitter, uint64 timeRef)
        internal
        returns (bool ok, bytes memory reason)
    {
        ISettlement.Batch memory batch;
        batch.asset = address(usdc);
        batch.timeRef = timeRef;
        batch.intents = new ISettlement.IntentSettlement[](s.slots);
        for (uint256 k; k < s.slots; ++k) {
            batch.intents[k] =
                ISettlement.IntentSettlement(intents[s.intent].id, s.windows[k], s.nonces[k], s.totals[k]);
        }
        batch.payouts = new ISettlement.Payout[](2);
        batch.payouts[0] = ISettlement.Payout(payees[0], s.toFirstPayee);
        batch.payouts[1] = ISettlement.Payout(payees[1], s.totals[0] + s.totals[1] - s.toFirstPayee);

        uint256[8] memory proof;
        ++proofs;
        for (uint256 i; i < 8; ++i) {
            proof[i] = uint256(keccak256(abi.encode(proofs, i)));
        }
        verifier.expect(keccak256(abi.encodePacked(proof, settlement.publicInputs(batch))));
        vm.prank(submitter);
        try settlement.settleBatch(proof, batch) {
            ok = true;
        } catch (bytes memory data) {
            reason = data;
        }
    }

    /// @dev Escrow of the payer's account with `processor` and the intent's budget not yet promised; escrow
    ///      excludes the account's pending withdrawal, which may execute inside the settlement window of what
    ///      is served now.
    function _promisable(uint256 payer, uint256 processor, bytes32 id, ISettlement.IntentRecord memory rec)
        internal
        view
        returns (uint256)
    {
        address account = payers[payer];
        uint256 balance = settlement.balanceOf(account, address(usdc), processors[processor]);
        uint256 held = settlement.pendingWithdrawal(account, address(usdc), processors[processor]).amount
            + reservedEscrow[payer][processor];
        uint256 escrow = balance > held ? balance - held : 0;
        uint256 committed = uint256(rec.spent) + reservedBudget[id];
        uint256 budget = rec.maxAmount > committed ? rec.maxAmount - committed : 0;
        uint256 max = escrow < budget ? escrow : budget;
        return max < MAX_AMOUNT ? max : MAX_AMOUNT;
    }

    /// @dev The seed's bits that are not taken yet, else a pseudo-random quarter of the free ones.
    function _freshNonces(uint256 seed, uint128 taken) internal pure returns (uint128 bits) {
        bits = uint128(seed) & ~taken;
        if (bits == 0) {
            uint256 r = uint256(keccak256(abi.encode(seed)));
            bits = uint128(r) & uint128(r >> 128) & ~taken;
        }
    }

    /// @dev Small windows (adjacent ones share a storage word), the top of the range, or anywhere.
    function _pickWindow(uint256 seed) internal pure returns (uint64) {
        uint256 pick = seed % 6;
        if (pick < 3) return uint64(pick);
        if (pick == 3) return LAST_WINDOW - 1;
        if (pick == 4) return LAST_WINDOW;
        return uint64((seed >> 8) % (uint256(LAST_WINDOW) + 1));
    }

    function _touch(bytes32 id, uint64 w) internal {
        if (touched[id][w]) return;
        touched[id][w] = true;
        keysTouched.push(NonceKey(id, w));
    }
}

contract SettlementInvariantTest is SettlementBase {
    SettlementHandler internal handler;

    function setUp() public {
        // withdrawalDelay == settlementWindow: the tightest configuration the constructor accepts.
        _deploy(2, 2, 1 hours, 1 hours);
        handler = new SettlementHandler(settlement, usdc, verifier);
        for (uint256 i; i < 3; ++i) {
            (address payer, uint256 key) = makeAddrAndKey(string(abi.encodePacked("payer", bytes1(uint8(65 + i)))));
            handler.addPayer(payer, key);
            // Every payer funds, consents to and holds an intent naming both P and Q (all in the ghosts).
            for (uint256 p; p < 2; ++p) {
                address proc = handler.processors(p); // read first: vm.prank applies to the next call
                vm.prank(payer);
                settlement.setProcessor(proc, true);
                handler.deposit(i, p, 5e11);
                handler.registerIntentNaming(i, p, uint256(keccak256(abi.encode("intent", i, p))));
            }
        }

        // Serving and settling are weighted up: they are what the guarantee is about.
        bytes4[] memory selectors = new bytes4[](19);
        selectors[0] = SettlementHandler.deposit.selector;
        selectors[1] = SettlementHandler.requestWithdrawal.selector;
        selectors[2] = SettlementHandler.executeWithdrawal.selector;
        selectors[3] = SettlementHandler.cancelWithdrawal.selector;
        selectors[4] = SettlementHandler.registerIntent.selector;
        selectors[5] = SettlementHandler.revokeIntent.selector;
        selectors[6] = SettlementHandler.setProcessor.selector;
        selectors[7] = SettlementHandler.warp.selector;
        selectors[8] = SettlementHandler.replay.selector;
        selectors[9] = SettlementHandler.crossSettle.selector;
        selectors[10] = SettlementHandler.requestWithdrawal.selector; // the payer racing a served batch
        for (uint256 i = 11; i < 15; ++i) {
            selectors[i] = SettlementHandler.serve.selector;
            selectors[i + 4] = SettlementHandler.settle.selector;
        }
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /// @dev Per-processor conservation: the contract holds exactly the sum over (payer, processor) accounts,
    ///      each account holds what was deposited into it less what its processor debited and what was
    ///      withdrawn from it, and escrow + payouts + withdrawals == deposits.
    function invariant_CustodyEqualsEscrow() public view {
        uint256 escrowed;
        for (uint256 i; i < handler.payerCount(); ++i) {
            for (uint256 p; p < handler.PROCESSORS(); ++p) {
                uint256 balance = settlement.balanceOf(handler.payers(i), address(usdc), handler.processors(p));
                assertEq(
                    balance + handler.ghostDebited(i, p) + handler.ghostWithdrawnFrom(i, p),
                    handler.ghostDeposited(i, p),
                    "account == deposited - debited by its processor - withdrawn from it"
                );
                escrowed += balance;
            }
        }
        assertEq(usdc.balanceOf(address(settlement)), escrowed, "custody == sum over (payer, processor) accounts");
        assertEq(escrowed + handler.ghostPayouts() + handler.ghostWithdrawn(), handler.ghostDeposits(), "conservation");
    }

    function invariant_SpentWithinBudget() public view {
        for (uint256 i; i < handler.intentCount(); ++i) {
            (bytes32 id,,) = handler.intents(i);
            ISettlement.IntentRecord memory rec = settlement.getIntent(id);
            assertLe(rec.spent, rec.maxAmount, "spent <= maxAmount");
            assertEq(rec.spent, handler.ghostSpent(id), "spent == ghost");
        }
    }

    /// @dev The stored bitmap equals the OR of everything settled (the ghost only grows, so no bit ever
    ///      clears), and no settled batch settles again.
    function invariant_NonceBitsNeverClear() public view {
        for (uint256 i; i < handler.nonceKeyCount(); ++i) {
            (bytes32 id, uint64 w) = handler.nonceKey(i);
            assertEq(settlement.settledNonces(id, w), handler.ghostSettled(id, w), "bitmap == OR of settled");
        }
        assertEq(handler.replaysSettled(), 0, "a replayed batch settled");
    }

    /// @dev No processor ever settles a batch of an intent that does not name it.
    function invariant_NoCrossProcessorSettlement() public view {
        assertEq(handler.crossSettled(), 0, "a processor settled another processor's batch");
    }

    /// @dev Every batch served while its intent was live and submitted inside the window settled, with two
    ///      processors debiting the same payers.
    function invariant_SettlementGuarantee() public view {
        if (handler.guaranteeViolations() == 0) return;
        bytes memory reason = handler.lastViolation();
        bytes4 selector;
        if (reason.length >= 4) selector = bytes4(reason);
        assertEq(bytes32(selector), bytes32("no revert"), "a guaranteed batch reverted with the left selector");
    }

    /// @dev Each (payer, processor) account covers every batch its processor served whose window is still open.
    function invariant_LiveMandatesCovered() public view {
        for (uint256 i; i < handler.payerCount(); ++i) {
            for (uint256 p; p < 2; ++p) {
                assertLe(
                    handler.liveReserved(i, p),
                    settlement.balanceOf(handler.payers(i), address(usdc), handler.processors(p)),
                    "covered"
                );
            }
        }
    }
}
