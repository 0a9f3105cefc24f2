pragma circom 2.1.5;

include "circomlib/circuits/poseidon.circom";
include "circomlib/circuits/bitify.circom";
include "circomlib/circuits/comparators.circom";
include "circomlib/circuits/babyjub.circom";
include "circomlib/circuits/eddsaposeidon.circom";

// Batch(N, I, P): one Groth16 proof settles up to N mandates of up to I intent slots, paid
// out to up to P payees (docs/PROTOCOL.md §3 and §5 are the normative layout).
//
// The contract supplies, per intent slot, the intent's commitment
//     intentHash = Poseidon(intentField, Poseidon(Ax, Ay), payeesRoot, cap)
// which it computed itself at registration from the payer-signed intent. The circuit proves
// that the processor knows, for every enabled mandate slot j:
//   - the opening of the selected slot's intentHash: the intent field the mandate signed, its
//     session key A, its payee allowlist root and its per-payment cap (intent binding: a
//     mandate settles only against the intent whose id it signed, on this chain and contract);
//   - an EdDSA-Poseidon signature by A over
//       M = Poseidon(intentField, payee + amount*2^160, requestHash + nonce*2^160 + deadline*2^200);
//   - that payee is the selected payee slot's address, and that address is in the intent's
//     payee allowlist (a Poseidon Merkle tree of depth D) unless the root is 0 (any payee);
//   - amount < 2^64 and amount <= cap; deadline >= timeRef;
//   - nonce lies in the slot's 128-nonce window and nonces strictly increase within a slot,
//     so the slot's nonce bitmap is a sum of distinct powers of two;
// and that the public per-slot figures are exact: the bitmap and total of each intent slot and
// the amount of each payee slot. The contract refuses a bitmap that overlaps the nonces already
// settled and then records it, so each nonce of an intent settles at most once and settling one
// never invalidates another.
//
// Disabled (padding) mandate slots carry amount 0 and select no intent and no payee, so they
// add nothing to any sum. Their signature check is switched off, but its witness computation
// still has to run without dividing by zero: a padding slot verifies against the base point B8
// (see settlement/encoding.py: padding_signature).

// A binary Poseidon Merkle root over 2^D leaves: `index`'s bits pick, level by level, whether
// the running node is the left or the right child.
template MerkleRoot(D) {
    signal input leaf;
    signal input index;
    signal input siblings[D];
    signal output root;

    component bits = Num2Bits(D);
    bits.in <== index;
    component hashers[D];
    signal node[D + 1];
    signal swap[D];
    node[0] <== leaf;
    for (var k = 0; k < D; k++) {
        // swap = bit * (sibling - node): left = node + swap, right = sibling - swap.
        swap[k] <== bits.out[k] * (siblings[k] - node[k]);
        hashers[k] = Poseidon(2);
        hashers[k].inputs[0] <== node[k] + swap[k];
        hashers[k].inputs[1] <== siblings[k] - swap[k];
        node[k + 1] <== hashers[k].out;
    }
    root <== node[D];
}

// One intent slot: unpacks the public word window | bitmap<<33 | total<<161 (Num2Bits makes
// the split unique and each part exactly as wide as PROTOCOL.md §5 says) and ties the private
// opening to the public commitment. An unused slot has intentHash = 0 and an all-zero word.
template IntentSlot() {
    signal input intentHash;
    signal input intentWord;
    signal input Ax;
    signal input Ay;
    signal input intentField;
    signal input payeesRoot;
    signal input cap;
    signal output window;
    signal output bitmap;
    signal output total;
    signal output anyPayee;   // 1 when the allowlist root is 0

    component bits = Num2Bits(249);
    bits.in <== intentWord;
    var w = 0; var b = 0; var t = 0;
    for (var k = 0; k < 33; k++) { w += bits.out[k] * (1 << k); }
    for (var k = 0; k < 128; k++) { b += bits.out[33 + k] * (1 << k); }
    for (var k = 0; k < 88; k++) { t += bits.out[161 + k] * (1 << k); }
    window <== w;
    bitmap <== b;
    total <== t;

    // cap < 2^64 keeps the amount comparison sound.
    component capBits = Num2Bits(64);
    capBits.in <== cap;

    component unused = IsZero();
    unused.in <== intentHash;
    component keyHash = Poseidon(2);
    keyHash.inputs[0] <== Ax;
    keyHash.inputs[1] <== Ay;
    component commitment = Poseidon(4);
    commitment.inputs[0] <== intentField;
    commitment.inputs[1] <== keyHash.out;
    commitment.inputs[2] <== payeesRoot;
    commitment.inputs[3] <== cap;
    (1 - unused.out) * (commitment.out - intentHash) === 0;
    unused.out * intentWord === 0;

    // A used slot's key is a BabyJubJub point (an unused slot's opening is free).
    signal x2 <== Ax * Ax;
    signal y2 <== Ay * Ay;
    signal x2y2 <== x2 * y2;
    (1 - unused.out) * (168700 * x2 + y2 - 1 - 168696 * x2y2) === 0;

    component rootZero = IsZero();
    rootZero.in <== payeesRoot;
    anyPayee <== rootZero.out;
}

// One payee slot: payee | amount<<160, payee 160 bits and amount 93 bits.
template PayeeSlot() {
    signal input payeeWord;
    signal output payee;
    signal output amount;

    component bits = Num2Bits(253);
    bits.in <== payeeWord;
    var a = 0; var b = 0;
    for (var k = 0; k < 160; k++) { a += bits.out[k] * (1 << k); }
    for (var k = 0; k < 93; k++) { b += bits.out[160 + k] * (1 << k); }
    payee <== a;
    amount <== b;
}

// Selectors that are bits summing to `enabled`: an enabled mandate picks exactly one slot,
// a padding one picks none.
template OneHot(K) {
    signal input sel[K];
    signal input enabled;
    var acc = 0;
    for (var k = 0; k < K; k++) {
        sel[k] * (1 - sel[k]) === 0;
        acc += sel[k];
    }
    acc === enabled;
}

// sum_k sel[k] * values[k]: the selected value (0 when nothing is selected).
template Select(K) {
    signal input sel[K];
    signal input values[K];
    signal output out;
    signal terms[K];
    var acc = 0;
    for (var k = 0; k < K; k++) {
        terms[k] <== sel[k] * values[k];
        acc += terms[k];
    }
    out <== acc;
}

// nonce < 2^40 split into its window (nonce >> 7) and its bit 2^(nonce mod 128).
template NonceBit() {
    signal input nonce;
    signal output window;
    signal output bit;

    component bits = Num2Bits(40);
    bits.in <== nonce;
    var w = 0;
    for (var k = 0; k < 33; k++) { w += bits.out[7 + k] * (1 << k); }
    window <== w;
    // 2^offset = prod_k (1 + b_k * (2^(2^k) - 1)) over the offset's 7 bits.
    signal power[7];
    power[0] <== 1 + bits.out[0];
    for (var k = 1; k < 7; k++) {
        power[k] <== power[k - 1] * (1 + bits.out[k] * ((1 << (1 << k)) - 1));
    }
    bit <== power[6];
}

// The checks of one mandate slot against the values of the slots it selected.
template MandateCheck() {
    signal input enabled;
    signal input timeRef;
    signal input field;       // selected slot's intent field
    signal input Ax;          // selected slot's key (0 when padding)
    signal input Ay;
    signal input cap;
    signal input window;
    signal input nextAllowed; // smallest nonce the selected slot still allows
    signal input payee;       // selected payee slot's address
    signal input amount;
    signal input nonce;
    signal input deadline;
    signal input requestHash;
    signal input R8x;
    signal input R8y;
    signal input S;
    signal output bit;        // 2^(nonce mod 128)

    var B8X = 5299619240641551281634865583518297030282874472190772894086521144482721001553;
    var B8Y = 16950150798460657717958625567821834550301663161624707787222815936182638968203;

    // A padding slot carries no value.
    (1 - enabled) * amount === 0;

    // Range checks keep the comparators sound (they assume n-bit inputs) and make the packing
    // of the signed message injective.
    component amountBits = Num2Bits(64);
    amountBits.in <== amount;
    component deadlineBits = Num2Bits(40);
    deadlineBits.in <== deadline;
    component requestBits = Num2Bits(160);
    requestBits.in <== requestHash;
    component nonceBit = NonceBit();
    nonceBit.nonce <== nonce;
    bit <== nonceBit.bit;

    // amount <= cap (padding: 0 <= 0).
    component capCheck = LessEqThan(64);
    capCheck.in[0] <== amount;
    capCheck.in[1] <== cap;
    capCheck.out === 1;

    // The nonce is in the slot's window and above the slot's previous nonce in this batch
    // (nonce < 2^40 and nextAllowed <= 2^40, so 41 bits suffice).
    enabled * (nonceBit.window - window) === 0;
    component nonceCheck = LessThan(41);
    nonceCheck.in[0] <== nonce;
    nonceCheck.in[1] <== nextAllowed;
    nonceCheck.out === 0;

    // Not expired at the batch's time reference.
    component deadlineCheck = LessThan(64);
    deadlineCheck.in[0] <== deadline;
    deadlineCheck.in[1] <== timeRef;
    deadlineCheck.out * enabled === 0;

    // R8 is a curve point (the padding signature's is too).
    component r8OnCurve = BabyCheck();
    r8OnCurve.x <== R8x;
    r8OnCurve.y <== R8y;

    component message = Poseidon(3);
    message.inputs[0] <== field;
    message.inputs[1] <== payee + amount * (1 << 160);
    message.inputs[2] <== requestHash + nonce * (1 << 160) + deadline * (1 << 200);

    // A padding slot (selected key all zero) checks against B8 instead, so its witness stays
    // computable; the check itself is off there.
    component signature = EdDSAPoseidonVerifier();
    signature.enabled <== enabled;
    signature.Ax <== Ax + (1 - enabled) * B8X;
    signature.Ay <== Ay + (1 - enabled) * B8Y;
    signature.S <== S;
    signature.R8x <== R8x;
    signature.R8y <== R8y;
    signature.M <== message.out;
}

template Batch(N, I, P, D) {
    // ---- public inputs (this order is the verifier's pubSignals order) ----
    signal input timeRef;             // unix seconds, < 2^64
    signal input intentHash[I];       // Poseidon(intentField, keyHash, payeesRoot, cap); 0 = unused
    signal input intentWord[I];       // window | bitmap<<33 | total<<161
    signal input payeeWord[P];        // payee | amount<<160

    // ---- private inputs: intent slots ----
    signal input Ax[I];
    signal input Ay[I];
    signal input intentField[I];      // uint256(intentId) >> 8, what this slot's mandates sign
    signal input payeesRoot[I];       // allowlist root; 0 = any payee
    signal input cap[I];              // min(maxPerPayment, 2^64 - 1)
    signal input payeeIndex[I][P];    // leaf index of payee slot p in intent s's allowlist
    signal input payeePath[I][P][D];  // its Merkle siblings

    // ---- private inputs: mandate slots ----
    signal input enabled[N];
    signal input intentSel[N][I];
    signal input payeeSel[N][P];
    signal input amount[N];
    signal input nonce[N];
    signal input deadline[N];
    signal input requestHash[N];
    signal input R8x[N];
    signal input R8y[N];
    signal input S[N];

    // timeRef < 2^64, so that the 64-bit comparison with each deadline is sound.
    component timeBits = Num2Bits(64);
    timeBits.in <== timeRef;

    component slot[I];
    for (var s = 0; s < I; s++) {
        slot[s] = IntentSlot();
        slot[s].intentHash <== intentHash[s];
        slot[s].intentWord <== intentWord[s];
        slot[s].Ax <== Ax[s];
        slot[s].Ay <== Ay[s];
        slot[s].intentField <== intentField[s];
        slot[s].payeesRoot <== payeesRoot[s];
        slot[s].cap <== cap[s];
    }
    component payee[P];
    for (var p = 0; p < P; p++) {
        payee[p] = PayeeSlot();
        payee[p].payeeWord <== payeeWord[p];
    }

    // nextAllowed[j][s]: the smallest nonce mandate j may carry for slot s. It becomes
    // nonce + 1 after each mandate of that slot: nonces strictly increase per slot, so each
    // sets a different bit of the slot's bitmap.
    signal nextAllowed[N + 1][I];
    for (var s = 0; s < I; s++) {
        nextAllowed[0][s] <== 0;
    }
    signal step[N][I];
    signal slotAmount[N][I];
    signal slotBit[N][I];
    signal payAmount[N][P];
    signal pair[N][I][P];

    component intentOneHot[N];
    component payeeOneHot[N];
    component selField[N];
    component selAx[N];
    component selAy[N];
    component selCap[N];
    component selWindow[N];
    component selNext[N];
    component selPayee[N];
    component check[N];
    for (var j = 0; j < N; j++) {
        enabled[j] * (1 - enabled[j]) === 0;
        intentOneHot[j] = OneHot(I);
        payeeOneHot[j] = OneHot(P);
        intentOneHot[j].enabled <== enabled[j];
        payeeOneHot[j].enabled <== enabled[j];
        selField[j] = Select(I);
        selAx[j] = Select(I);
        selAy[j] = Select(I);
        selCap[j] = Select(I);
        selWindow[j] = Select(I);
        selNext[j] = Select(I);
        for (var s = 0; s < I; s++) {
            intentOneHot[j].sel[s] <== intentSel[j][s];
            selField[j].sel[s] <== intentSel[j][s];
            selField[j].values[s] <== intentField[s];
            selAx[j].sel[s] <== intentSel[j][s];
            selAx[j].values[s] <== Ax[s];
            selAy[j].sel[s] <== intentSel[j][s];
            selAy[j].values[s] <== Ay[s];
            selCap[j].sel[s] <== intentSel[j][s];
            selCap[j].values[s] <== cap[s];
            selWindow[j].sel[s] <== intentSel[j][s];
            selWindow[j].values[s] <== slot[s].window;
            selNext[j].sel[s] <== intentSel[j][s];
            selNext[j].values[s] <== nextAllowed[j][s];
        }
        selPayee[j] = Select(P);
        for (var p = 0; p < P; p++) {
            payeeOneHot[j].sel[p] <== payeeSel[j][p];
            selPayee[j].sel[p] <== payeeSel[j][p];
            selPayee[j].values[p] <== payee[p].payee;
        }

        check[j] = MandateCheck();
        check[j].enabled <== enabled[j];
        check[j].timeRef <== timeRef;
        check[j].field <== selField[j].out;
        check[j].Ax <== selAx[j].out;
        check[j].Ay <== selAy[j].out;
        check[j].cap <== selCap[j].out;
        check[j].window <== selWindow[j].out;
        check[j].nextAllowed <== selNext[j].out;
        check[j].payee <== selPayee[j].out;
        check[j].amount <== amount[j];
        check[j].nonce <== nonce[j];
        check[j].deadline <== deadline[j];
        check[j].requestHash <== requestHash[j];
        check[j].R8x <== R8x[j];
        check[j].R8y <== R8y[j];
        check[j].S <== S[j];

        // Advance the selected slot: nextAllowed += sel * (nonce + 1 - nextAllowed).
        for (var s = 0; s < I; s++) {
            step[j][s] <== intentSel[j][s] * (nonce[j] + 1 - nextAllowed[j][s]);
            nextAllowed[j + 1][s] <== nextAllowed[j][s] + step[j][s];
            slotAmount[j][s] <== intentSel[j][s] * amount[j];
            slotBit[j][s] <== intentSel[j][s] * check[j].bit;
            for (var p = 0; p < P; p++) {
                pair[j][s][p] <== intentSel[j][s] * payeeSel[j][p];
            }
        }
        for (var p = 0; p < P; p++) {
            payAmount[j][p] <== payeeSel[j][p] * amount[j];
        }
    }

    // Per intent slot: the public bitmap and total are exact sums over its mandates (the bits
    // are distinct powers of two, and N * 2^64 << r). An unused slot's zero word keeps every
    // mandate off it: a selected mandate would add a non-zero bit.
    for (var s = 0; s < I; s++) {
        var bits = 0;
        var sum = 0;
        for (var j = 0; j < N; j++) {
            bits += slotBit[j][s];
            sum += slotAmount[j][s];
        }
        slot[s].bitmap === bits;
        slot[s].total === sum;
    }

    // Per payee slot: paid exactly what its mandates add up to.
    for (var p = 0; p < P; p++) {
        var sum = 0;
        for (var j = 0; j < N; j++) {
            sum += payAmount[j][p];
        }
        payee[p].amount === sum;
    }

    // Allowlists: a (slot, payee) pair used by any mandate needs the payee in the slot's tree,
    // unless the slot allows any payee. One membership proof per pair, not per mandate.
    component member[I][P];
    signal guarded[I][P];
    for (var s = 0; s < I; s++) {
        for (var p = 0; p < P; p++) {
            var used = 0;
            for (var j = 0; j < N; j++) {
                used += pair[j][s][p];
            }
            member[s][p] = MerkleRoot(D);
            member[s][p].leaf <== payee[p].payee;
            member[s][p].index <== payeeIndex[s][p];
            for (var k = 0; k < D; k++) {
                member[s][p].siblings[k] <== payeePath[s][p][k];
            }
            guarded[s][p] <== used * (1 - slot[s].anyPayee);
            guarded[s][p] * (member[s][p].root - payeesRoot[s]) === 0;
        }
    }
}
