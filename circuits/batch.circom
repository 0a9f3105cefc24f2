pragma circom 2.1.5;

include "circomlib/circuits/poseidon.circom";
include "circomlib/circuits/bitify.circom";
include "circomlib/circuits/comparators.circom";
include "circomlib/circuits/eddsaposeidon.circom";

// Batch(N, I, P): one Groth16 proof settles up to N mandates of up to I intents,
// paid out to up to P payees (docs/PROTOCOL.md §3 and §5 are the normative layout).
//
// It proves that the processor knows, for every enabled mandate slot j:
//   - a session key A of intent slot s (Poseidon(Ax, Ay) == keyHash[s]) and an
//     EdDSA-Poseidon signature by A over
//       M = Poseidon(intentField[s], payee + amount*2^160, requestHash + nonce*2^160 + deadline*2^200)
//     (three packed field elements, PROTOCOL.md §3: fewer Poseidon inputs verify faster off-chain);
//   - that payee is the address of the selected payee slot p;
//   - amount < 2^64 and amount <= cap[s];
//   - deadline >= timeRef (the mandate may still be settled at the batch's time reference);
//   - nonces strictly increase per intent slot in mandate order, the first one of a slot
//     is >= startNonce[s] (the contract's nextNonce) and the last one is lastNonce[s];
// and that the public per-slot sums are exact: count[s] and total[s] over the mandates of
// intent slot s, and amount[p] over the mandates paid to payee slot p. The contract then
// moves exactly total[s] out of each intent's escrow and pays exactly amount[p] to each payee.
//
// Disabled (padding) mandate slots carry amount 0 and select no intent and no payee, so they
// add nothing to any sum. Their signature check is switched off (EdDSAPoseidonVerifier's
// `enabled` input), but its witness computation still has to run without dividing by zero:
// a padding slot verifies against the base point B8 as its key (the selected key is all zero
// there, and B8 is substituted), and the witness supplies a real signature with secret
// scalar 1 over the padding message (see settlement/prover.py: padding_signature).
//
// Intent binding: a session key belongs to exactly one registered intent (the contract
// refuses a second intent with the same key hash, PROTOCOL.md §2), so a signature under
// the key of slot s can only have been made for that slot's intent; intentField[s] is a
// private input that the signer committed to inside M.
template Batch(N, I, P) {
    // ---- public inputs (this order is the verifier's pubSignals order) ----
    signal input timeRef;             // unix seconds, < 2^64
    signal input keyHash[I];          // Poseidon(Ax, Ay) per intent slot; 0 = unused slot
    signal input intentWord[I];       // startNonce | lastNonce<<40 | count<<80 | total<<96 | cap<<184
    signal input payeeWord[P];        // payee | amount<<160

    // ---- private inputs: intent slots ----
    signal input Ax[I];
    signal input Ay[I];
    signal input intentField[I];      // uint256(intentId) >> 8, what this slot's mandates sign

    // ---- private inputs: mandate slots ----
    signal input enabled[N];
    signal input intentSel[N][I];     // one-hot, sums to enabled[j]
    signal input payeeSel[N][P];      // one-hot, sums to enabled[j]
    signal input amount[N];
    signal input nonce[N];
    signal input deadline[N];
    signal input requestHash[N];
    signal input R8x[N];
    signal input R8y[N];
    signal input S[N];

    var i;
    var j;
    var s;
    var p;
    var acc;

    // Base point B8 of BabyJubJub: the stand-in key of padding slots.
    var B8X = 5299619240641551281634865583518297030282874472190772894086521144482721001553;
    var B8Y = 16950150798460657717958625567821834550301663161624707787222815936182638968203;

    // timeRef < 2^64, so that the 64-bit comparison with each deadline is sound.
    component timeBits = Num2Bits(64);
    timeBits.in <== timeRef;

    // ---- unpack the intent words ----
    // Num2Bits(248) both range-checks the word (< 2^248) and makes the split unique, so
    // every packed field has exactly the width PROTOCOL.md §5 gives it.
    signal startNonce[I];
    signal lastNonce[I];
    signal count[I];
    signal total[I];
    signal cap[I];
    component intentBits[I];
    for (s = 0; s < I; s++) {
        intentBits[s] = Num2Bits(248);
        intentBits[s].in <== intentWord[s];
        var f0 = 0; var f1 = 0; var f2 = 0; var f3 = 0; var f4 = 0;
        for (i = 0; i < 40; i++) { f0 += intentBits[s].out[i] * (1 << i); }
        for (i = 0; i < 40; i++) { f1 += intentBits[s].out[40 + i] * (1 << i); }
        for (i = 0; i < 16; i++) { f2 += intentBits[s].out[80 + i] * (1 << i); }
        for (i = 0; i < 88; i++) { f3 += intentBits[s].out[96 + i] * (1 << i); }
        for (i = 0; i < 64; i++) { f4 += intentBits[s].out[184 + i] * (1 << i); }
        startNonce[s] <== f0;
        lastNonce[s] <== f1;
        count[s] <== f2;
        total[s] <== f3;
        cap[s] <== f4;
    }

    // ---- unpack the payee words: payee 160 bits, amount 93 bits ----
    signal payee[P];
    signal payeeAmount[P];
    component payeeBits[P];
    for (p = 0; p < P; p++) {
        payeeBits[p] = Num2Bits(253);
        payeeBits[p].in <== payeeWord[p];
        var a = 0; var b = 0;
        for (i = 0; i < 160; i++) { a += payeeBits[p].out[i] * (1 << i); }
        for (i = 0; i < 93; i++) { b += payeeBits[p].out[160 + i] * (1 << i); }
        payee[p] <== a;
        payeeAmount[p] <== b;
    }

    // ---- intent slots: key commitment, unused slots ----
    // A used slot (keyHash != 0) must hold the key behind keyHash. An unused slot must have
    // an all-zero word; with count == 0 the count sum below then keeps every mandate off it.
    component slotUnused[I];
    component keyHasher[I];
    for (s = 0; s < I; s++) {
        slotUnused[s] = IsZero();
        slotUnused[s].in <== keyHash[s];
        keyHasher[s] = Poseidon(2);
        keyHasher[s].inputs[0] <== Ax[s];
        keyHasher[s].inputs[1] <== Ay[s];
        (1 - slotUnused[s].out) * (keyHasher[s].out - keyHash[s]) === 0;
        slotUnused[s].out * intentWord[s] === 0;
    }

    // ---- mandate slots ----
    // nextAllowed[j][s]: the smallest nonce a mandate j may carry for slot s, given the
    // mandates before it. It starts at startNonce and becomes nonce + 1 after each mandate
    // of that slot, so nonces strictly increase per intent but may leave gaps: a mandate the
    // gateway refused must not block the later ones (PROTOCOL.md §3).
    signal nextAllowed[N + 1][I];
    for (s = 0; s < I; s++) {
        nextAllowed[0][s] <== startNonce[s];
    }

    // Products sel*x, one signal per (mandate, slot), to form the selected values.
    signal selField[N][I];
    signal selAx[N][I];
    signal selAy[N][I];
    signal selCap[N][I];
    signal selNext[N][I];
    signal selStep[N][I];
    signal selAmount[N][I];
    signal paySel[N][P];
    signal payAmount[N][P];

    signal field_[N];
    signal payeeOf[N];
    signal capOf[N];
    signal nextOf[N];

    component amountBits[N];
    component nonceBits[N];
    component deadlineBits[N];
    component requestBits[N];
    component capCheck[N];
    component nonceCheck[N];
    component deadlineCheck[N];
    component msgHash[N];
    component sigCheck[N];

    for (j = 0; j < N; j++) {
        // enabled is a bit; selectors are bits that sum to enabled, so an enabled mandate
        // selects exactly one intent slot and one payee slot and a padding slot selects none.
        enabled[j] * (1 - enabled[j]) === 0;
        acc = 0;
        for (s = 0; s < I; s++) {
            intentSel[j][s] * (1 - intentSel[j][s]) === 0;
            acc += intentSel[j][s];
        }
        acc === enabled[j];
        acc = 0;
        for (p = 0; p < P; p++) {
            payeeSel[j][p] * (1 - payeeSel[j][p]) === 0;
            acc += payeeSel[j][p];
        }
        acc === enabled[j];

        // A padding slot carries no value.
        (1 - enabled[j]) * amount[j] === 0;

        // Range checks: amount < 2^64, nonce < 2^40, deadline < 2^40, requestHash < 2^160.
        // They keep the LessThan comparators below sound (they assume inputs of at most n
        // bits) and make the packing of the signed message injective: without them another
        // (requestHash, nonce, deadline) could pack to the same field element.
        amountBits[j] = Num2Bits(64);
        amountBits[j].in <== amount[j];
        nonceBits[j] = Num2Bits(40);
        nonceBits[j].in <== nonce[j];
        deadlineBits[j] = Num2Bits(40);
        deadlineBits[j].in <== deadline[j];
        requestBits[j] = Num2Bits(160);
        requestBits[j].in <== requestHash[j];

        // Selected intent-slot values (all zero for a padding slot).
        var fAcc = 0; var xAcc = 0; var yAcc = 0; var cAcc = 0; var nAcc = 0;
        for (s = 0; s < I; s++) {
            selField[j][s] <== intentSel[j][s] * intentField[s];
            selAx[j][s] <== intentSel[j][s] * Ax[s];
            selAy[j][s] <== intentSel[j][s] * Ay[s];
            selCap[j][s] <== intentSel[j][s] * cap[s];
            selNext[j][s] <== intentSel[j][s] * nextAllowed[j][s];
            fAcc += selField[j][s];
            xAcc += selAx[j][s];
            yAcc += selAy[j][s];
            cAcc += selCap[j][s];
            nAcc += selNext[j][s];
        }
        field_[j] <== fAcc;
        capOf[j] <== cAcc;
        nextOf[j] <== nAcc;
        var pAcc = 0;
        for (p = 0; p < P; p++) {
            paySel[j][p] <== payeeSel[j][p] * payee[p];
            pAcc += paySel[j][p];
        }
        payeeOf[j] <== pAcc;

        // amount <= cap of the selected intent (padding: 0 <= 0). Both sides < 2^64.
        capCheck[j] = LessEqThan(64);
        capCheck[j].in[0] <== amount[j];
        capCheck[j].in[1] <== capOf[j];
        capCheck[j].out === 1;

        // nonce >= nextAllowed of the selected slot (padding: compares with 0, always holds).
        // nonce < 2^40 and nextAllowed <= 2^40, so 41 bits suffice.
        nonceCheck[j] = LessThan(41);
        nonceCheck[j].in[0] <== nonce[j];
        nonceCheck[j].in[1] <== nextOf[j];
        nonceCheck[j].out === 0;

        // Advance the selected slot: nextAllowed += sel*(nonce + 1 - nextAllowed).
        for (s = 0; s < I; s++) {
            selStep[j][s] <== intentSel[j][s] * (nonce[j] + 1 - nextAllowed[j][s]);
            nextAllowed[j + 1][s] <== nextAllowed[j][s] + selStep[j][s];
        }

        // deadline >= timeRef when enabled: the mandate has not expired at the time reference
        // (the contract requires timeRef <= block.timestamp).
        deadlineCheck[j] = LessThan(64);
        deadlineCheck[j].in[0] <== deadline[j];
        deadlineCheck[j].in[1] <== timeRef;
        deadlineCheck[j].out * enabled[j] === 0;

        // The signed message, packed as in PROTOCOL.md §3 (payee < 2^160 comes from the
        // range-checked payee word; the other parts are range-checked above).
        msgHash[j] = Poseidon(3);
        msgHash[j].inputs[0] <== field_[j];
        msgHash[j].inputs[1] <== payeeOf[j] + amount[j] * (1 << 160);
        msgHash[j].inputs[2] <== requestHash[j] + nonce[j] * (1 << 160) + deadline[j] * (1 << 200);

        // Signature under the selected key. A padding slot (selected key all zero) checks
        // against B8 instead, so its witness stays computable; the check itself is off there.
        sigCheck[j] = EdDSAPoseidonVerifier();
        sigCheck[j].enabled <== enabled[j];
        sigCheck[j].Ax <== xAcc + (1 - enabled[j]) * B8X;
        sigCheck[j].Ay <== yAcc + (1 - enabled[j]) * B8Y;
        sigCheck[j].S <== S[j];
        sigCheck[j].R8x <== R8x[j];
        sigCheck[j].R8y <== R8y[j];
        sigCheck[j].M <== msgHash[j].out;

        // Per-mandate contributions to the intent totals and payouts.
        for (s = 0; s < I; s++) {
            selAmount[j][s] <== intentSel[j][s] * amount[j];
        }
        for (p = 0; p < P; p++) {
            payAmount[j][p] <== payeeSel[j][p] * amount[j];
        }
    }

    // ---- per-slot sums ----
    // count and total are exact sums over the slot's mandates (no overflow: N*2^64 << r).
    // lastNonce is the last nonce taken by the slot: nextAllowed ended at lastNonce + 1.
    // A slot with no mandates must report lastNonce 0, so a batch cannot move an intent's
    // on-chain nextNonce without settling one of its mandates.
    component noMandates[I];
    for (s = 0; s < I; s++) {
        var cnt = 0;
        var sum = 0;
        for (j = 0; j < N; j++) {
            cnt += intentSel[j][s];
            sum += selAmount[j][s];
        }
        count[s] === cnt;
        total[s] === sum;
        count[s] * (nextAllowed[N][s] - 1 - lastNonce[s]) === 0;
        noMandates[s] = IsZero();
        noMandates[s].in <== count[s];
        noMandates[s].out * lastNonce[s] === 0;
    }

    // Each payee slot is paid exactly what its mandates add up to.
    for (p = 0; p < P; p++) {
        var sum = 0;
        for (j = 0; j < N; j++) {
            sum += payAmount[j][p];
        }
        payeeAmount[p] === sum;
    }
}
