// SPDX-License-Identifier: MIT
pragma solidity ^0.8.26;

import {MockUSDC} from "../src/MockUSDC.sol";
import {Settlement} from "../src/Settlement.sol";
import {ISettlement} from "../src/interfaces/ISettlement.sol";
import {ExpectingVerifier} from "./mocks/ExpectingVerifier.sol";
import {SettlementBase} from "./utils/SettlementBase.sol";
import {Test} from "./utils/Test.sol";

/// @notice Plays three payers against the handler, which is also the processor and its gateways: payers
///         deposit, withdraw, register and revoke intents and grant or withdraw consent; the gateway serves
///         mandates and the processor settles (and replays) batches of them. Ghost state records what was
///         deposited, paid, withdrawn, settled and served.
/// @dev Serving follows what a gateway checks before it answers (PROTOCOL.md §2, §3): the mandate's nonces
///      are fresh for the intent, and the escrow and budget not yet promised to earlier mandates cover it.
///      The escrow a gateway may promise excludes the payer's pending withdrawal, which may execute inside
///      the window; a request made after serving waits withdrawalDelay >= settlementWindow. A batch served
///      while the intent was live (named this processor, valid, not revoked, consent not withdrawn) and
///      submitted before servedAt + settlementWindow must settle: any revert is a guarantee violation.
///      Every other batch is attempted too, and may fail. The test verifier is armed with the contract's
///      own public inputs (their encoding is pinned by the unit tests). Time is kept here and re-applied
///      at every call, so it never depends on the fuzzer carrying vm.warp from call to call.
contract SettlementHandler is Test {
    /// @dev A batch the gateway served: one or two windows of one intent, paid to both payees.
    struct Served {
        uint256 intent;
        uint64 servedAt;
        bool guaranteed;
        uint256 slots;
        uint64[2] windows;
        uint128[2] nonces;
        uint96[2] totals;
        uint96 toFirstPayee;
    }

    struct Intent {
        bytes32 id;
        uint256 payer;
    }

    struct NonceKey {
        bytes32 id;
        uint64 window;
    }

    uint256 internal constant MAX_INTENTS = 10;
    uint256 internal constant MAX_PENDING = 6;
    uint256 internal constant MAX_HISTORY = 8;
    uint256 internal constant MAX_AMOUNT = 1e12;
    uint64 internal constant LAST_WINDOW = 2 ** 33 - 1;
    uint256 internal constant FIELD_MODULUS =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;

    Settlement internal immutable settlement;
    MockUSDC internal immutable usdc;
    ExpectingVerifier internal immutable verifier;
    uint64 internal immutable window;
    address internal immutable foreignProcessor;

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
    mapping(bytes32 id => uint256) public ghostSpent;
    /// @notice OR of every bitmap this handler settled, per intent window (only ever grows).
    mapping(bytes32 id => mapping(uint64 window => uint128)) public ghostSettled;
    /// @dev Nonces served and not yet settled or dropped, per intent window (a gateway never re-serves them).
    mapping(bytes32 id => mapping(uint64 window => uint128)) internal claimed;
    mapping(uint256 payer => uint256) internal reservedEscrow;
    mapping(bytes32 id => uint256) internal reservedBudget;

    uint256 public guaranteeViolations;
    bytes public lastViolation;
    uint256 public replaysSettled;
    uint256 public guaranteedSettled;
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
        foreignProcessor = address(0xF0E1);
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

    /// @notice Escrow promised to `payer`'s served batches whose settlement window is still open.
    function liveReserved(uint256 payer) external view returns (uint256 sum) {
        for (uint256 k; k < pending.length; ++k) {
            Served storage s = pending[k];
            if (intents[s.intent].payer == payer && time < s.servedAt + window) sum += s.totals[0] + s.totals[1];
        }
    }

    /*//////////////////////////////////////////////////////////////
                                 PAYERS
    //////////////////////////////////////////////////////////////*/

    function deposit(uint256 actor, uint256 amount) public atTime {
        address payer = payers[actor % payers.length];
        amount = bound(amount, 1, MAX_AMOUNT);
        usdc.mint(payer, amount);
        vm.startPrank(payer);
        usdc.approve(address(settlement), amount);
        settlement.deposit(address(usdc), amount);
        vm.stopPrank();
        ghostDeposits += amount;
    }

    /// @param servedOne Act as the payer of a batch the gateway served and has not settled yet.
    /// @dev Even seeds withdraw everything: the payer racing the processor for its escrow.
    function requestWithdrawal(uint256 actor, uint256 amount, bool servedOne) external atTime {
        address payer = payers[_actor(actor, servedOne)];
        uint256 balance = settlement.balanceOf(payer, address(usdc));
        if (balance == 0) return;
        vm.prank(payer);
        settlement.requestWithdrawal(address(usdc), amount % 2 == 0 ? balance : bound(amount, 1, balance));
    }

    /// @param waitUntilReady Jump to readyAt when the request is not ready yet (else do nothing).
    /// @param servedOne Act as the payer of a batch the gateway served and has not settled yet.
    function executeWithdrawal(uint256 actor, bool waitUntilReady, bool servedOne) external atTime {
        address payer = payers[_actor(actor, servedOne)];
        ISettlement.Withdrawal memory w = settlement.pendingWithdrawal(payer, address(usdc));
        if (w.amount == 0) return;
        if (time < w.readyAt) {
            if (!waitUntilReady) return;
            time = w.readyAt;
            vm.warp(time);
        }
        vm.prank(payer);
        ghostWithdrawn += settlement.executeWithdrawal(address(usdc));
    }

    function cancelWithdrawal(uint256 actor) external atTime {
        address payer = payers[actor % payers.length];
        if (settlement.pendingWithdrawal(payer, address(usdc)).amount == 0) return;
        vm.prank(payer);
        settlement.cancelWithdrawal(address(usdc));
    }

    /// @dev Session key hashes come from a set of three, so intents share keys; one in five names
    ///      another processor (the handler can never settle those).
    function registerIntent(uint256 actor, uint256 seed) external atTime {
        if (intents.length >= MAX_INTENTS) return;
        uint256 payer = actor % payers.length;
        ISettlement.Intent memory intent = ISettlement.Intent({
            payer: payers[payer],
            asset: address(usdc),
            sessionKeyHash: 1 + seed % 3,
            maxAmount: bound(seed >> 8, 1, 4 * MAX_AMOUNT),
            maxPerPayment: bound(seed >> 64, 1, type(uint128).max),
            validAfter: uint64(time - 1 hours),
            validBefore: uint64(time + bound(seed >> 128, 1, 10 days)),
            payeesRoot: (seed >> 200) % 2 == 0 ? 0 : uint256(keccak256(abi.encode(seed))) % FIELD_MODULUS,
            processor: seed % 5 == 0 ? foreignProcessor : address(this),
            salt: bytes32(++salts)
        });
        (uint8 v, bytes32 r, bytes32 s) = vm.sign(keys[payer], settlement.intentDigest(intent));
        intents.push(Intent(settlement.registerIntent(intent, abi.encodePacked(r, s, v)), payer));
    }

    /// @param servedOne Revoke the intent of a batch the gateway served and has not settled yet.
    function revokeIntent(uint256 index, bool servedOne) external atTime {
        if (intents.length == 0) return;
        Intent memory it =
            intents[servedOne && pending.length != 0 ? pending[index % pending.length].intent : index % intents.length];
        vm.prank(payers[it.payer]);
        settlement.revokeIntent(it.id);
    }

    /// @param servedOne Act as the payer of a batch the gateway served and has not settled yet.
    function setProcessor(uint256 actor, bool allowed, bool servedOne) external atTime {
        vm.prank(payers[_actor(actor, servedOne)]);
        settlement.setProcessor(address(this), allowed);
    }

    function warp(uint256 seconds_) external atTime {
        time += bound(seconds_, 0, window);
        vm.warp(time);
    }

    /*//////////////////////////////////////////////////////////////
                            GATEWAY / PROCESSOR
    //////////////////////////////////////////////////////////////*/

    /// @notice A gateway serves one or two windows of fresh nonces of an intent, promising escrow and budget.
    function serve(uint256 index, uint256 windowSeed, uint256 bitsSeed, uint256 amount, bool twoWindows)
        external
        atTime
    {
        if (intents.length == 0 || pending.length >= MAX_PENDING) return;
        Served memory s;
        s.intent = index % intents.length;
        s.servedAt = uint64(time);
        bytes32 id = intents[s.intent].id;

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
        uint256 payer = intents[s.intent].payer;
        uint256 total = bound(amount, 0, _promisable(payer, id, rec));
        s.totals[0] = uint96(s.slots == 2 ? bound(amount >> 128, 0, total) : total);
        s.totals[1] = uint96(total - s.totals[0]);
        s.toFirstPayee = uint96(bound(bitsSeed >> 64, 0, total));
        s.guaranteed = rec.processor == address(this) && rec.revokedAt == 0
            && settlement.processorConsentUntil(payers[payer], address(this)) == type(uint64).max
            && rec.validAfter <= time && time < rec.validBefore;

        reservedEscrow[payer] += total;
        reservedBudget[id] += total;
        for (uint256 k; k < s.slots; ++k) {
            claimed[id][s.windows[k]] |= s.nonces[k];
        }
        pending.push(s);
    }

    /// @notice The processor submits up to three served batches, one by one (timeRef = serve time).
    function settle(uint256 index, uint256 count) external atTime {
        count = bound(count, 1, 3);
        for (uint256 k; k < count && pending.length != 0; ++k) {
            _settle(index % pending.length);
        }
    }

    /// @notice Resubmits a settled batch with a fresh time reference and a proof the verifier accepts:
    ///         only the nonce bitmap stands in the way, so it must never settle.
    function replay(uint256 index) external atTime {
        if (history.length == 0) return;
        (bool ok,) = _submit(history[index % history.length], uint64(time));
        if (ok) ++replaysSettled;
    }

    /*//////////////////////////////////////////////////////////////
                                INTERNAL
    //////////////////////////////////////////////////////////////*/

    /// @dev Submits pending[index], records the outcome and drops it from the pending list.
    function _settle(uint256 index) internal {
        Served memory s = pending[index];
        pending[index] = pending[pending.length - 1];
        pending.pop();

        bytes32 id = intents[s.intent].id;
        uint256 total = uint256(s.totals[0]) + s.totals[1];
        reservedEscrow[intents[s.intent].payer] -= total;
        reservedBudget[id] -= total;

        bool inWindow = time < uint256(s.servedAt) + window;
        bool revoked = settlement.getIntent(id).revokedAt != 0;
        bool deauthorised =
            settlement.processorConsentUntil(payers[intents[s.intent].payer], address(this)) != type(uint64).max;
        (bool ok, bytes memory reason) = _submit(s, s.servedAt);
        if (ok) {
            ghostPayouts += total;
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
                ++guaranteedSettled;
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

    /// @dev A payer: the one of a pending served batch if `servedOne` and there is one, else any.
    function _actor(uint256 seed, bool servedOne) internal view returns (uint256) {
        if (servedOne && pending.length != 0) return intents[pending[seed % pending.length].intent].payer;
        return seed % payers.length;
    }

    function _submit(Served memory s, uint64 timeRef) internal returns (bool ok, bytes memory reason) {
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
        try settlement.settleBatch(proof, batch) {
            ok = true;
        } catch (bytes memory data) {
            reason = data;
        }
    }

    /// @dev Escrow and budget not yet promised: escrow excludes the pending withdrawal, which may execute
    ///      inside the settlement window of what is served now.
    function _promisable(uint256 payer, bytes32 id, ISettlement.IntentRecord memory rec)
        internal
        view
        returns (uint256)
    {
        uint256 balance = settlement.balanceOf(payers[payer], address(usdc));
        uint256 held = settlement.pendingWithdrawal(payers[payer], address(usdc)).amount + reservedEscrow[payer];
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
            vm.prank(payer);
            settlement.setProcessor(address(handler), true);
            handler.addPayer(payer, key);
            handler.deposit(i, 5e11); // start funded (counted in the ghost deposits)
            handler.registerIntent(i, (uint256(keccak256(abi.encode("intent", i))) >> 8) * 5 + 1); // names the handler
        }

        // Serving and settling are weighted up: they are what the guarantee is about.
        bytes4[] memory selectors = new bytes4[](17);
        selectors[0] = SettlementHandler.deposit.selector;
        selectors[1] = SettlementHandler.requestWithdrawal.selector;
        selectors[2] = SettlementHandler.executeWithdrawal.selector;
        selectors[3] = SettlementHandler.cancelWithdrawal.selector;
        selectors[4] = SettlementHandler.registerIntent.selector;
        selectors[5] = SettlementHandler.revokeIntent.selector;
        selectors[6] = SettlementHandler.setProcessor.selector;
        selectors[7] = SettlementHandler.warp.selector;
        selectors[8] = SettlementHandler.replay.selector;
        for (uint256 i = 9; i < 13; ++i) {
            selectors[i] = SettlementHandler.serve.selector;
            selectors[i + 4] = SettlementHandler.settle.selector;
        }
        targetSelector(FuzzSelector({addr: address(handler), selectors: selectors}));
        targetContract(address(handler));
    }

    /// @dev The contract holds exactly the escrowed balances, and escrow + payouts + withdrawals == deposits.
    function invariant_CustodyEqualsEscrow() public view {
        uint256 escrowed;
        for (uint256 i; i < handler.payerCount(); ++i) {
            escrowed += settlement.balanceOf(handler.payers(i), address(usdc));
        }
        assertEq(usdc.balanceOf(address(settlement)), escrowed, "custody == sum of escrow balances");
        assertEq(escrowed + handler.ghostPayouts() + handler.ghostWithdrawn(), handler.ghostDeposits(), "conservation");
    }

    function invariant_SpentWithinBudget() public view {
        for (uint256 i; i < handler.intentCount(); ++i) {
            (bytes32 id,) = handler.intents(i);
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

    /// @dev Every batch served while its intent was live and submitted inside the window settled.
    function invariant_SettlementGuarantee() public view {
        if (handler.guaranteeViolations() == 0) return;
        bytes memory reason = handler.lastViolation();
        bytes4 selector;
        if (reason.length >= 4) selector = bytes4(reason);
        assertEq(bytes32(selector), bytes32("no revert"), "a guaranteed batch reverted with the left selector");
    }

    /// @dev The payer's escrow covers every served batch whose settlement window is still open.
    function invariant_LiveMandatesCovered() public view {
        for (uint256 i; i < handler.payerCount(); ++i) {
            assertLe(handler.liveReserved(i), settlement.balanceOf(handler.payers(i), address(usdc)), "covered");
        }
    }
}
