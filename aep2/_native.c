/* aep2._native: BN254 scalar-field arithmetic, circomlib Poseidon and BabyJubJub for
 * EdDSA-Poseidon verification, in C.
 *
 * Why native: a mandate check hashes twice with Poseidon (the mandate's M, and the
 * challenge hm) and does two scalar multiplications. Through light-poseidon's binding the
 * two hashes alone took about 230 us (the arkworks permutation itself, not the conversion
 * of its arguments), and the gmpy2 multiplications about 180 us, against a 150 us budget
 * for the whole check. Here both run on 4x64-bit Montgomery limbs.
 *
 * Where the time went next, and what fixed it (profiled per primitive, bench.verify):
 * - GCC compiles 128-bit carry chains to spills: an addition cost a third of a product.
 *   Additions use ADC/SBB (add_carry, sub_borrow); on CPUs with BMI2 and ADX the product,
 *   Poseidon's accumulated products and its wide reductions use MULX with two carry chains
 *   (chosen once at import; set_backend lets the tests run both paths).
 * - Scalar multiplications spent 10 products per table addition on the general-a curve.
 *   They run on the isomorphic a = -1 curve with affine Niels table entries: 7.
 *
 * Every function takes and returns field elements as 32-byte big-endian strings; the
 * Python modules (aep2.poseidon, aep2.eddsa) own the ints, the range checks that name a
 * field, and the docs. Nothing here keeps state between calls except FixedBase tables,
 * which are pure functions of their base point, and the backend choice.
 *
 * Field: r = 21888242871839275222246405745257275088548364400416034343698204186575808495617
 * (< 2^254, so sums of two reduced values never overflow 256 bits). Curve: circomlib
 * babyjub.circom, a = 168700, d = 168696, computed on -x^2 + y^2 = 1 + d'x^2y^2 (see
 * the BabyJubJub section) in extended coordinates with the complete "add-2008-hwcd-3".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef unsigned __int128 u128;
typedef struct { uint64_t v[4]; } fe; /* Montgomery form, little-endian limbs, < r */

typedef struct {
    int t, partial_rounds;
    const uint64_t (*C)[4], (*S)[4], (*M)[4], (*P)[4];
} poseidon_params;

#include "_poseidon_constants.h"

static const fe FIELD = {{0x43e1f593f0000001ULL, 0x2833e84879b97091ULL, 0xb85045b68181585dULL, 0x30644e72e131a029ULL}};
static const uint64_t FIELD_INV = 0xc2e1f593efffffffULL; /* -r^-1 mod 2^64 */
static const fe R2 = {{0x1bb8e645ae216da7ULL, 0x53fe3ab1e35c59e3ULL, 0x8c49833d53bb8085ULL, 0x0216d0b17f4e44a5ULL}};
static const fe ONE = {{0xac96341c4ffffffbULL, 0x36fc76959f60cd29ULL, 0x666ea36f7879462eULL, 0x0e0a77c19a07df2fULL}};
static const fe CURVE_A = {{0x95accf61fff261e0ULL, 0x24780d659df7d378ULL, 0xe0ac11b07e906ae8ULL, 0x0f35db2216d3def3ULL}};
static const fe CURVE_D = {{0x2735f484aff261f5ULL, 0x70ba1b579a2e0f63ULL, 0xff41c9a91e2caa8cULL, 0x07704a8e8fe6025fULL}};
/* circomlib's subOrder l: EdDSA requires S < l. */
static const uint64_t SUBGROUP_ORDER[4] = {0x677297dc392126f1ULL, 0xab3eedb83920ee0aULL, 0x370a08b6d0302b0bULL, 0x060c89ce5c263405ULL};
/* Table scalars must be below 2^SCALAR_BITS (r and l both are). */
#define SCALAR_BITS 254

/* ---------------------------------------------------------------- field */

static int less_than(const uint64_t a[4], const uint64_t b[4]) {
    for (int i = 3; i >= 0; i--) {
        if (a[i] != b[i]) return a[i] < b[i];
    }
    return 0;
}

/* Add and subtract with carry. On x86-64 the compiler's intrinsics become ADC/SBB chains; GCC
 * compiles the portable 128-bit form to carries spilled through registers and memory, which
 * made an addition cost as much as half a product. */
#if defined(__x86_64__)
#include <x86intrin.h>
static inline __attribute__((always_inline)) uint64_t add_carry(uint64_t a, uint64_t b, unsigned char *carry) {
    unsigned long long out;
    *carry = _addcarry_u64(*carry, a, b, &out);
    return out;
}
static inline __attribute__((always_inline)) uint64_t sub_borrow(uint64_t a, uint64_t b, unsigned char *borrow) {
    unsigned long long out;
    *borrow = _subborrow_u64(*borrow, a, b, &out);
    return out;
}
#else
static inline uint64_t add_carry(uint64_t a, uint64_t b, unsigned char *carry) {
    u128 sum = (u128)a + b + *carry;
    *carry = (unsigned char)(sum >> 64);
    return (uint64_t)sum;
}
static inline uint64_t sub_borrow(uint64_t a, uint64_t b, unsigned char *borrow) {
    u128 diff = (u128)a - b - *borrow;
    *borrow = (unsigned char)((diff >> 64) & 1);
    return (uint64_t)diff;
}
#endif

/* r = t - r when t >= r, else t, for t < 2r; without a branch (random field data would
 * mispredict half the time). */
static inline __attribute__((always_inline)) void reduce_once(uint64_t r[4], uint64_t t0, uint64_t t1, uint64_t t2, uint64_t t3) {
    unsigned char borrow = 0;
    const uint64_t d0 = sub_borrow(t0, FIELD.v[0], &borrow);
    const uint64_t d1 = sub_borrow(t1, FIELD.v[1], &borrow);
    const uint64_t d2 = sub_borrow(t2, FIELD.v[2], &borrow);
    const uint64_t d3 = sub_borrow(t3, FIELD.v[3], &borrow);
    const uint64_t keep = -(uint64_t)borrow; /* all ones when t < r */
    r[0] = (t0 & keep) | (d0 & ~keep);
    r[1] = (t1 & keep) | (d1 & ~keep);
    r[2] = (t2 & keep) | (d2 & ~keep);
    r[3] = (t3 & keep) | (d3 & ~keep);
}

static inline void sub_field_if_needed(uint64_t t[4]) { reduce_once(t, t[0], t[1], t[2], t[3]); }

static inline __attribute__((always_inline)) void fe_add(fe *r, const fe *a, const fe *b) {
    /* a + b < 2r < 2^255: no carry out of the top limb. */
    unsigned char carry = 0;
    const uint64_t t0 = add_carry(a->v[0], b->v[0], &carry);
    const uint64_t t1 = add_carry(a->v[1], b->v[1], &carry);
    const uint64_t t2 = add_carry(a->v[2], b->v[2], &carry);
    const uint64_t t3 = add_carry(a->v[3], b->v[3], &carry);
    reduce_once(r->v, t0, t1, t2, t3);
}

static inline __attribute__((always_inline)) void fe_sub(fe *r, const fe *a, const fe *b) {
    unsigned char borrow = 0, carry = 0;
    uint64_t t0 = sub_borrow(a->v[0], b->v[0], &borrow);
    uint64_t t1 = sub_borrow(a->v[1], b->v[1], &borrow);
    uint64_t t2 = sub_borrow(a->v[2], b->v[2], &borrow);
    uint64_t t3 = sub_borrow(a->v[3], b->v[3], &borrow);
    const uint64_t mask = -(uint64_t)borrow; /* went below zero: add r back */
    r->v[0] = add_carry(t0, FIELD.v[0] & mask, &carry);
    r->v[1] = add_carry(t1, FIELD.v[1] & mask, &carry);
    r->v[2] = add_carry(t2, FIELD.v[2] & mask, &carry);
    r->v[3] = add_carry(t3, FIELD.v[3] & mask, &carry);
}

static inline void fe_neg(fe *r, const fe *a) {
    static const fe zero = {{0, 0, 0, 0}};
    fe_sub(r, &zero, a);
}

/* One step of a schoolbook product: (carry, t) = t + a·b + carry. */
#define MAC(t, a, b, carry) do { \
    u128 mac_ = (u128)(a) * (b) + (t) + (carry); \
    (t) = (uint64_t)mac_; \
    (carry) = (uint64_t)(mac_ >> 64); \
} while (0)

/* Montgomery product a·b·2^-256 mod r: CIOS, unrolled (the loops' bounds are constants, and
 * unrolling is what makes a product cost tens of cycles rather than hundreds). Portable C,
 * for CPUs without BMI2 and ADX. */
static inline __attribute__((always_inline)) void fe_mul_portable(fe *r, const fe *a, const fe *b) {
    const uint64_t a0 = a->v[0], a1 = a->v[1], a2 = a->v[2], a3 = a->v[3];
    uint64_t t0 = 0, t1 = 0, t2 = 0, t3 = 0, t4 = 0, carry, m;
#define ROUND(bi) do { \
    uint64_t t5; \
    carry = 0; \
    MAC(t0, a0, bi, carry); MAC(t1, a1, bi, carry); MAC(t2, a2, bi, carry); MAC(t3, a3, bi, carry); \
    { u128 s_ = (u128)t4 + carry; t4 = (uint64_t)s_; t5 = (uint64_t)(s_ >> 64); } \
    m = t0 * FIELD_INV; \
    carry = 0; \
    MAC(t0, m, 0x43e1f593f0000001ULL, carry); \
    MAC(t1, m, 0x2833e84879b97091ULL, carry); t0 = t1; \
    MAC(t2, m, 0xb85045b68181585dULL, carry); t1 = t2; \
    MAC(t3, m, 0x30644e72e131a029ULL, carry); t2 = t3; \
    { u128 s_ = (u128)t4 + carry; t3 = (uint64_t)s_; t4 = t5 + (uint64_t)(s_ >> 64); } \
} while (0)
    ROUND(b->v[0]);
    ROUND(b->v[1]);
    ROUND(b->v[2]);
    ROUND(b->v[3]);
#undef ROUND
    /* r < 2^254 keeps the result below 2r, within four limbs (t4 == 0). */
    r->v[0] = t0;
    r->v[1] = t1;
    r->v[2] = t2;
    r->v[3] = t3;
    sub_field_if_needed(r->v);
}

#if defined(__x86_64__) && defined(__GNUC__)
/* The same product with MULX and the two carry chains of ADCX/ADOX (BMI2 and ADX), about 1.5x
 * faster than the C above, which GCC compiles to MUL with one carry flag and register spills.
 * "No-carry" CIOS: r's top limb is below 2^63 - 1, so the product's top word never
 * overflows and each round needs no fifth limb. Chosen once per process (fe_mul, below). */
static const uint64_t FIELD_LIMBS[4] = {0x43e1f593f0000001ULL, 0x2833e84879b97091ULL, 0xb85045b68181585dULL, 0x30644e72e131a029ULL};
#define HAVE_ADX_MUL 1
/* t = a·b[0]; c is the top word. */
#define ADX_MUL_FIRST \
    "movq 0(%[b]), %%rdx\n\t" \
    "xorl %%eax, %%eax\n\t" \
    "mulxq 0(%[a]), %[t0], %[t1]\n\t" \
    "mulxq 8(%[a]), %%rax, %[t2]\n\t" \
    "adoxq %%rax, %[t1]\n\t" \
    "mulxq 16(%[a]), %%rax, %[t3]\n\t" \
    "adoxq %%rax, %[t2]\n\t" \
    "mulxq 24(%[a]), %%rax, %[c]\n\t" \
    "adoxq %%rax, %[t3]\n\t" \
    "movl $0, %%eax\n\t" \
    "adoxq %%rax, %[c]\n\t"
/* t += a·b[i] (byte offset off); c is the top word. */
#define ADX_MUL_NEXT(off) \
    "movq " #off "(%[b]), %%rdx\n\t" \
    "xorl %%eax, %%eax\n\t" \
    "mulxq 0(%[a]), %%rax, %[c]\n\t" \
    "adoxq %%rax, %[t0]\n\t" \
    "adcxq %[c], %[t1]\n\t" \
    "mulxq 8(%[a]), %%rax, %[c]\n\t" \
    "adoxq %%rax, %[t1]\n\t" \
    "adcxq %[c], %[t2]\n\t" \
    "mulxq 16(%[a]), %%rax, %[c]\n\t" \
    "adoxq %%rax, %[t2]\n\t" \
    "adcxq %[c], %[t3]\n\t" \
    "mulxq 24(%[a]), %%rax, %[c]\n\t" \
    "adoxq %%rax, %[t3]\n\t" \
    "movl $0, %%eax\n\t" \
    "adcxq %%rax, %[c]\n\t" \
    "adoxq %%rax, %[c]\n\t"
/* m = t0·(-r^-1); t = (c·2^256 + t + m·r) / 2^64, exact since the low word cancels. */
#define ADX_REDUCE \
    "movq %[t0], %%rdx\n\t" \
    "imulq %[inv], %%rdx\n\t" \
    "xorl %%eax, %%eax\n\t" \
    "mulxq 0(%[q]), %%rax, %[s]\n\t" \
    "adcxq %[t0], %%rax\n\t" \
    "movq %[s], %[t0]\n\t" \
    "adcxq %[t1], %[t0]\n\t" \
    "mulxq 8(%[q]), %%rax, %[t1]\n\t" \
    "adoxq %%rax, %[t0]\n\t" \
    "adcxq %[t2], %[t1]\n\t" \
    "mulxq 16(%[q]), %%rax, %[t2]\n\t" \
    "adoxq %%rax, %[t1]\n\t" \
    "adcxq %[t3], %[t2]\n\t" \
    "mulxq 24(%[q]), %%rax, %[t3]\n\t" \
    "adoxq %%rax, %[t2]\n\t" \
    "movl $0, %%eax\n\t" \
    "adcxq %%rax, %[t3]\n\t" \
    "adoxq %[c], %[t3]\n\t"

static inline __attribute__((always_inline)) void fe_mul_adx(fe *r, const fe *a, const fe *b) {
    uint64_t t0, t1, t2, t3, c, s;
    __asm__(ADX_MUL_FIRST ADX_REDUCE
            ADX_MUL_NEXT(8) ADX_REDUCE
            ADX_MUL_NEXT(16) ADX_REDUCE
            ADX_MUL_NEXT(24) ADX_REDUCE
            : [t0] "=&r"(t0), [t1] "=&r"(t1), [t2] "=&r"(t2), [t3] "=&r"(t3), [c] "=&r"(c), [s] "=&r"(s)
            : [a] "r"(a->v), [b] "r"(b->v), [q] "r"(FIELD_LIMBS), [inv] "r"(FIELD_INV), "m"(*a), "m"(*b)
            : "rax", "rdx", "cc");
    r->v[0] = t0;
    r->v[1] = t1;
    r->v[2] = t2;
    r->v[3] = t3;
    sub_field_if_needed(r->v);
}
#endif

/* Whether fe_mul uses fe_mul_adx: set at import from the CPU's features (set_backend for tests). */
static int use_adx = 0;

static int cpu_has_adx(void) {
#ifdef HAVE_ADX_MUL
    __builtin_cpu_init();
    return __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("adx");
#else
    return 0;
#endif
}

/* name(...) runs name_adx or name_portable as use_adx says (a well-predicted branch). */
#ifdef HAVE_ADX_MUL
#define DISPATCH(name, ...) do { \
    if (__builtin_expect(use_adx, 1)) name##_adx(__VA_ARGS__); \
    else name##_portable(__VA_ARGS__); \
} while (0)
#else
#define DISPATCH(name, ...) name##_portable(__VA_ARGS__)
#endif

static inline __attribute__((always_inline)) void fe_mul(fe *r, const fe *a, const fe *b) { DISPATCH(fe_mul, r, a, b); }

/* Sums of products reduced once: acc += a·b as a 512-bit integer (at most 7 terms, each below
 * r^2, so the sum stays below 2^512), then fe_reduce_wide. In Poseidon's matrix products this
 * halves the work per term: the Montgomery reduction is as costly as the product itself. */
static inline void fe_mul_acc_portable(uint64_t acc[8], const fe *a, const fe *b) {
    for (int i = 0; i < 4; i++) {
        uint64_t carry = 0;
        MAC(acc[i], a->v[0], b->v[i], carry);
        MAC(acc[i + 1], a->v[1], b->v[i], carry);
        MAC(acc[i + 2], a->v[2], b->v[i], carry);
        MAC(acc[i + 3], a->v[3], b->v[i], carry);
        for (int k = i + 4; carry && k < 8; k++) {
            u128 s = (u128)acc[k] + carry;
            acc[k] = (uint64_t)s;
            carry = (uint64_t)(s >> 64);
        }
    }
}

#ifdef HAVE_ADX_MUL
/* Row i of the schoolbook product: p[i .. i+4] += a·b[i] (byte offset off), two carry chains. */
#define ADX_PRODUCT_ROW(off, pi, pi1, pi2, pi3, pi4) \
    "movq " #off "(%[b]), %%rdx\n\t" \
    "xorl %%eax, %%eax\n\t" \
    "mulxq 0(%[a]), %%rax, %[h]\n\t" \
    "adoxq %%rax, %[" #pi "]\n\t" \
    "adcxq %[h], %[" #pi1 "]\n\t" \
    "mulxq 8(%[a]), %%rax, %[h]\n\t" \
    "adoxq %%rax, %[" #pi1 "]\n\t" \
    "adcxq %[h], %[" #pi2 "]\n\t" \
    "mulxq 16(%[a]), %%rax, %[h]\n\t" \
    "adoxq %%rax, %[" #pi2 "]\n\t" \
    "adcxq %[h], %[" #pi3 "]\n\t" \
    "mulxq 24(%[a]), %%rax, %[" #pi4 "]\n\t" \
    "adoxq %%rax, %[" #pi3 "]\n\t" \
    "movl $0, %%eax\n\t" \
    "adcxq %%rax, %[" #pi4 "]\n\t" \
    "adoxq %%rax, %[" #pi4 "]\n\t"

/* fe_mul_acc with the 512-bit product from MULX, then one ADC chain into acc. */
static inline __attribute__((always_inline)) void fe_mul_acc_adx(uint64_t acc[8], const fe *a, const fe *b) {
    uint64_t p0, p1, p2, p3, p4, p5, p6, p7, h;
    __asm__("movq 0(%[b]), %%rdx\n\t"
            "xorl %%eax, %%eax\n\t"
            "mulxq 0(%[a]), %[p0], %[p1]\n\t"
            "mulxq 8(%[a]), %%rax, %[p2]\n\t"
            "adcxq %%rax, %[p1]\n\t"
            "mulxq 16(%[a]), %%rax, %[p3]\n\t"
            "adcxq %%rax, %[p2]\n\t"
            "mulxq 24(%[a]), %%rax, %[p4]\n\t"
            "adcxq %%rax, %[p3]\n\t"
            "movl $0, %%eax\n\t"
            "adcxq %%rax, %[p4]\n\t"
            ADX_PRODUCT_ROW(8, p1, p2, p3, p4, p5)
            ADX_PRODUCT_ROW(16, p2, p3, p4, p5, p6)
            ADX_PRODUCT_ROW(24, p3, p4, p5, p6, p7)
            : [p0] "=&r"(p0), [p1] "=&r"(p1), [p2] "=&r"(p2), [p3] "=&r"(p3), [p4] "=&r"(p4), [p5] "=&r"(p5),
              [p6] "=&r"(p6), [p7] "=&r"(p7), [h] "=&r"(h)
            : [a] "r"(a->v), [b] "r"(b->v), "m"(*a), "m"(*b)
            : "rax", "rdx", "cc");
    unsigned char carry = 0;
    acc[0] = add_carry(acc[0], p0, &carry);
    acc[1] = add_carry(acc[1], p1, &carry);
    acc[2] = add_carry(acc[2], p2, &carry);
    acc[3] = add_carry(acc[3], p3, &carry);
    acc[4] = add_carry(acc[4], p4, &carry);
    acc[5] = add_carry(acc[5], p5, &carry);
    acc[6] = add_carry(acc[6], p6, &carry);
    acc[7] = add_carry(acc[7], p7, &carry);
}
#endif

static inline __attribute__((always_inline)) void fe_mul_acc(uint64_t acc[8], const fe *a, const fe *b) { DISPATCH(fe_mul_acc, acc, a, b); }

/* Montgomery reduction of a sum of at most 7 products: T·2^-256 mod r. The result is below
 * T/2^256 + r < 2.3r before the final subtractions. */
static inline void fe_reduce_wide_portable(fe *r, uint64_t t[8]) {
    uint64_t high = 0;
    for (int i = 0; i < 4; i++) {
        uint64_t m = t[i] * FIELD_INV, carry = 0;
        MAC(t[i], m, FIELD.v[0], carry);
        MAC(t[i + 1], m, FIELD.v[1], carry);
        MAC(t[i + 2], m, FIELD.v[2], carry);
        MAC(t[i + 3], m, FIELD.v[3], carry);
        u128 s = (u128)t[i + 4] + carry + high;
        t[i + 4] = (uint64_t)s;
        high = (uint64_t)(s >> 64);
    }
    memcpy(r->v, &t[4], sizeof r->v);
    sub_field_if_needed(r->v);
    sub_field_if_needed(r->v);
}

#ifdef HAVE_ADX_MUL
/* The same reduction with MULX: REDC(T) = REDC(T mod 2^256) + floor(T / 2^256), since the
 * reduction's multipliers depend on the low half only. The first term is at most r. */
static inline __attribute__((always_inline)) void fe_reduce_wide_adx(fe *r, const uint64_t t[8]) {
    uint64_t t0 = t[0], t1 = t[1], t2 = t[2], t3 = t[3], s;
    __asm__(ADX_REDUCE ADX_REDUCE ADX_REDUCE ADX_REDUCE
            : [t0] "+&r"(t0), [t1] "+&r"(t1), [t2] "+&r"(t2), [t3] "+&r"(t3), [s] "=&r"(s)
            : [q] "r"(FIELD_LIMBS), [inv] "r"(FIELD_INV), [c] "r"((uint64_t)0)
            : "rax", "rdx", "cc");
    unsigned char carry = 0;
    r->v[0] = add_carry(t0, t[4], &carry);
    r->v[1] = add_carry(t1, t[5], &carry);
    r->v[2] = add_carry(t2, t[6], &carry);
    r->v[3] = add_carry(t3, t[7], &carry);
    sub_field_if_needed(r->v);
    sub_field_if_needed(r->v);
}
#endif

static inline __attribute__((always_inline)) void fe_reduce_wide(fe *r, uint64_t t[8]) { DISPATCH(fe_reduce_wide, r, t); }

static inline int fe_equal(const fe *a, const fe *b) { return memcmp(a->v, b->v, sizeof a->v) == 0; }

static void load_be(uint64_t out[4], const unsigned char *in) {
    for (int i = 0; i < 4; i++) {
        uint64_t w = 0;
        for (int k = 0; k < 8; k++) w = (w << 8) | in[(3 - i) * 8 + k];
        out[i] = w;
    }
}

static void store_be(unsigned char *out, const uint64_t in[4]) {
    for (int i = 0; i < 4; i++) {
        for (int k = 0; k < 8; k++) out[(3 - i) * 8 + k] = (unsigned char)(in[i] >> (56 - 8 * k));
    }
}

/* 32 big-endian bytes to Montgomery form; 0 when the value is not below r. */
static int fe_from_be(fe *r, const unsigned char *in) {
    fe plain;
    load_be(plain.v, in);
    if (!less_than(plain.v, FIELD.v)) return 0;
    fe_mul(r, &plain, &R2);
    return 1;
}

static void fe_to_plain(uint64_t out[4], const fe *a) {
    static const fe one_plain = {{1, 0, 0, 0}};
    fe r;
    fe_mul(&r, a, &one_plain);
    memcpy(out, r.v, sizeof r.v);
}

/* a^(r-2) = a^-1 (Fermat); a must be non-zero. */
static void fe_inv(fe *r, const fe *a) {
    static const uint64_t e[4] = {0x43e1f593efffffffULL, 0x2833e84879b97091ULL, 0xb85045b68181585dULL, 0x30644e72e131a029ULL};
    fe acc = ONE;
    for (int i = 3; i >= 0; i--) {
        for (int b = 63; b >= 0; b--) {
            fe_mul(&acc, &acc, &acc);
            if ((e[i] >> b) & 1) fe_mul(&acc, &acc, a);
        }
    }
    *r = acc;
}

/* ---------------------------------------------------------------- Poseidon */

static inline void pow5(fe *a) {
    fe sq;
    fe_mul(&sq, a, a);
    fe_mul(&sq, &sq, &sq);
    fe_mul(a, a, &sq);
}

static void mix(fe *state, int t, const uint64_t (*matrix)[4]) {
    fe out[8];
    for (int i = 0; i < t; i++) {
        uint64_t acc[8] = {0};
        for (int j = 0; j < t; j++) fe_mul_acc(acc, (const fe *)matrix[j * t + i], &state[j]);
        fe_reduce_wide(&out[i], acc);
    }
    memcpy(state, out, (size_t)t * sizeof(fe));
}

static void full_round(fe *state, int t, const uint64_t (*constants)[4], const uint64_t (*matrix)[4]) {
    for (int i = 0; i < t; i++) {
        pow5(&state[i]);
        if (constants) fe_add(&state[i], &state[i], (const fe *)constants[i]);
    }
    mix(state, t, matrix);
}

/* circomlibjs poseidon_opt.js with initState 0 and one output, statement by statement. */
static void poseidon_hash(fe *out, const fe *inputs, int n) {
    const poseidon_params *pp = &POSEIDON_PARAMS[n - 1];
    const int t = pp->t, half = 4; /* N_ROUNDS_F / 2 */
    fe state[8];
    memset(&state[0], 0, sizeof(fe));
    memcpy(&state[1], inputs, (size_t)n * sizeof(fe));
    for (int i = 0; i < t; i++) fe_add(&state[i], &state[i], (const fe *)pp->C[i]);
    for (int r = 0; r < half - 1; r++) full_round(state, t, &pp->C[(r + 1) * t], pp->M);
    full_round(state, t, &pp->C[half * t], pp->P);
    for (int r = 0; r < pp->partial_rounds; r++) {
        const uint64_t (*s)[4] = &pp->S[(2 * t - 1) * r];
        pow5(&state[0]);
        fe_add(&state[0], &state[0], (const fe *)pp->C[(half + 1) * t + r]);
        fe s0, term;
        uint64_t acc[8] = {0};
        for (int j = 0; j < t; j++) fe_mul_acc(acc, (const fe *)s[j], &state[j]);
        fe_reduce_wide(&s0, acc);
        for (int k = 1; k < t; k++) {
            fe_mul(&term, &state[0], (const fe *)s[t + k - 1]);
            fe_add(&state[k], &state[k], &term);
        }
        state[0] = s0;
    }
    for (int r = 0; r < half - 1; r++)
        full_round(state, t, &pp->C[(half + 1) * t + pp->partial_rounds + r * t], pp->M);
    full_round(state, t, NULL, pp->M);
    *out = state[0];
}

/* ---------------------------------------------------------------- BabyJubJub */

/* Points are stored and added on the isomorphic curve -x'^2 + y^2 = 1 + d'·x'^2·y^2 with
 * x' = s·x, s = sqrt(-a), d' = -d/a: with a = -1 the addition "add-2008-hwcd-3" takes 8
 * products (7 against a table point kept as affine (y-x, y+x, 2d'·x·y)) where the general-a
 * one takes 10. It stays complete: -1 is a square mod r and d' is not (as d is not). Only
 * FixedBase's input and output and R8 cross the map; equality is preserved both ways.
 * Montgomery forms of s = 6360561867910373094066688120553762416144456282423235903351243436111059670888
 * (s^2 = -168700 mod r), of 1/s and of 2d' = -2·168696/168700 mod r. */
static const fe ISO_S = {{0xe77f2cb3269fc386ULL, 0x2ffbbf36ea0da89fULL, 0x3afc6b3516e0d90fULL, 0x12bc88bf75913573ULL}};
static const fe ISO_S_INV = {{0xe20e74d43e4fe829ULL, 0xa8d667e4f5a39962ULL, 0x406eb7865831de44ULL, 0x1f91608db0da6c67ULL}};
static const fe ISO_K = {{0x74951b58b09ee319ULL, 0x7948709cb6cd1cd7ULL, 0xd6b6a48830a3748dULL, 0x305b9e606e11e0f8ULL}}; /* 2d' */

typedef struct { fe x, y, z, t; } ext_point; /* on the a = -1 curve: x' = X/Z, y = Y/Z, T = XY/Z */
typedef struct { fe ymx, ypx, kt; } niels_point; /* affine y - x', y + x', 2d'·x'·y */

static const ext_point IDENTITY_EXT = {{{0}}, {{0xac96341c4ffffffbULL, 0x36fc76959f60cd29ULL, 0x666ea36f7879462eULL, 0x0e0a77c19a07df2fULL}},
                                       {{0xac96341c4ffffffbULL, 0x36fc76959f60cd29ULL, 0x666ea36f7879462eULL, 0x0e0a77c19a07df2fULL}}, {{0}}};

/* The tail of add-2008-hwcd-3, shared by both additions: from A = (Y1-X1)(Y2-X2),
 * B = (Y1+X1)(Y2+X2), C = T1·2d'·T2 and D = 2·Z1·Z2. */
static inline void add_finish(ext_point *r, const fe *a, const fe *b, const fe *c, const fe *d) {
    fe e, f, g, h;
    fe_sub(&e, b, a);
    fe_sub(&f, d, c);
    fe_add(&g, d, c);
    fe_add(&h, b, a);
    fe_mul(&r->x, &e, &f);
    fe_mul(&r->y, &g, &h);
    fe_mul(&r->t, &e, &h);
    fe_mul(&r->z, &f, &g);
}

/* p + q for an affine table point q (7 products). r may be p. */
static void add_niels(ext_point *r, const ext_point *p, const fe *q_ymx, const fe *q_ypx, const fe *q_kt) {
    fe a, b, c, d;
    fe_sub(&a, &p->y, &p->x);
    fe_mul(&a, &a, q_ymx);
    fe_add(&b, &p->y, &p->x);
    fe_mul(&b, &b, q_ypx);
    fe_mul(&c, &p->t, q_kt);
    fe_add(&d, &p->z, &p->z);
    add_finish(r, &a, &b, &c, &d);
}

/* p + q, both extended (9 products); complete, so also doubles. r may be p or q. */
static void add_ext(ext_point *r, const ext_point *p, const ext_point *q) {
    fe a, b, c, d, s;
    fe_sub(&a, &p->y, &p->x);
    fe_sub(&s, &q->y, &q->x);
    fe_mul(&a, &a, &s);
    fe_add(&b, &p->y, &p->x);
    fe_add(&s, &q->y, &q->x);
    fe_mul(&b, &b, &s);
    fe_mul(&c, &p->t, &ISO_K);
    fe_mul(&c, &c, &q->t);
    fe_mul(&d, &p->z, &q->z);
    fe_add(&d, &d, &d);
    add_finish(r, &a, &b, &c, &d);
}

/* An affine point (x, y) of BabyJubJub itself (circomlib's coordinates) on the a = -1 curve. */
static void ext_from_babyjub(ext_point *r, const fe *x, const fe *y) {
    fe_mul(&r->x, x, &ISO_S);
    r->y = *y;
    r->z = ONE;
    fe_mul(&r->t, &r->x, y);
}

/* Whether (x, y), in circomlib's coordinates, satisfies a·x^2 + y^2 = 1 + d·x^2·y^2. */
static int on_curve(const fe *x, const fe *y) {
    fe x2, y2, left, right;
    fe_mul(&x2, x, x);
    fe_mul(&y2, y, y);
    fe_mul(&left, &CURVE_A, &x2);
    fe_add(&left, &left, &y2);
    fe_mul(&right, &x2, &y2);
    fe_mul(&right, &CURVE_D, &right);
    fe_add(&right, &right, &ONE);
    return fe_equal(&left, &right);
}

/* FixedBase: signed-window table of one point, as aep2.babyjubjub.FixedBaseTable lays it
 * out (row i holds j·2^(w·i)·P for j = 1 .. 2^(w-1)), each entry affine in Niels form. */
typedef struct {
    PyObject_HEAD
    int window, rows;
    niels_point *table;
} FixedBase;

static int bits_at(const uint64_t k[4], int start, int count) {
    int limb = start / 64, shift = start % 64;
    if (limb >= 4) return 0;
    uint64_t w = k[limb] >> shift;
    if (shift + count > 64 && limb + 1 < 4) w |= k[limb + 1] << (64 - shift);
    return (int)(w & ((1ULL << count) - 1));
}

/* scalar·P for a plain (non-Montgomery) scalar below 2^SCALAR_BITS. Constant digit count, but
 * not constant time: it only ever multiplies public values (signatures, hashes, keys). */
static void fixed_multiply(ext_point *r, const FixedBase *fb, const uint64_t k[4]) {
    const int w = fb->window, full = 1 << w, half = full >> 1;
    int carry = 0;
    ext_point acc = IDENTITY_EXT;
    for (int i = 0; i < fb->rows; i++) {
        int digit = bits_at(k, i * w, w) + carry;
        carry = digit > half;
        if (carry) digit -= full;
        if (!digit) continue;
        const niels_point *q = &fb->table[(size_t)i * half + (digit > 0 ? digit : -digit) - 1];
        if (digit > 0) {
            add_niels(&acc, &acc, &q->ymx, &q->ypx, &q->kt);
        } else { /* -(x', y) = (-x', y): y - x' and y + x' swap, the product changes sign */
            fe neg_kt;
            fe_neg(&neg_kt, &q->kt);
            add_niels(&acc, &acc, &q->ypx, &q->ymx, &neg_kt);
        }
    }
    *r = acc;
}

static int parse_point(fe *x, fe *y, const Py_buffer *buf, const char *what) {
    if (buf->len != 64) {
        PyErr_Format(PyExc_ValueError, "%s: expected 64 bytes (x || y), got %zd", what, buf->len);
        return 0;
    }
    if (!fe_from_be(x, buf->buf) || !fe_from_be(y, (const unsigned char *)buf->buf + 32)) {
        PyErr_Format(PyExc_ValueError, "%s: a coordinate is not a BN254 field element", what);
        return 0;
    }
    return 1;
}

/* Affine Niels forms of n extended points, with one inversion (Montgomery's batch trick);
 * prefix holds n scratch elements. Z is never 0: the addition is complete. */
static void normalise_row(niels_point *out, const ext_point *points, fe *prefix, int n) {
    prefix[0] = points[0].z;
    for (int j = 1; j < n; j++) fe_mul(&prefix[j], &prefix[j - 1], &points[j].z);
    fe inv, zinv, x, y;
    fe_inv(&inv, &prefix[n - 1]);
    for (int j = n - 1; j >= 0; j--) {
        if (j) {
            fe_mul(&zinv, &inv, &prefix[j - 1]);
            fe_mul(&inv, &inv, &points[j].z);
        } else {
            zinv = inv;
        }
        fe_mul(&x, &points[j].x, &zinv);
        fe_mul(&y, &points[j].y, &zinv);
        fe_sub(&out[j].ymx, &y, &x);
        fe_add(&out[j].ypx, &y, &x);
        fe_mul(&out[j].kt, &x, &y);
        fe_mul(&out[j].kt, &out[j].kt, &ISO_K);
    }
}

static int FixedBase_init(FixedBase *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"point", "window", NULL};
    Py_buffer point;
    int window;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*i", kwlist, &point, &window)) return -1;
    fe x, y;
    int ok = parse_point(&x, &y, &point, "point");
    PyBuffer_Release(&point);
    if (!ok) return -1;
    if (window < 2 || window > 12) {
        PyErr_SetString(PyExc_ValueError, "window must be in [2, 12]");
        return -1;
    }
    const int half = 1 << (window - 1), rows = (SCALAR_BITS + 1 + window - 1) / window;
    niels_point *table = PyMem_Malloc((size_t)rows * half * sizeof(niels_point));
    ext_point *row = PyMem_Malloc((size_t)half * sizeof(ext_point));
    fe *prefix = PyMem_Malloc((size_t)half * sizeof(fe));
    if (!table || !row || !prefix) {
        PyMem_Free(table);
        PyMem_Free(row);
        PyMem_Free(prefix);
        PyErr_NoMemory();
        return -1;
    }
    ext_point base;
    ext_from_babyjub(&base, &x, &y);
    for (int i = 0; i < rows; i++) {
        row[0] = base;
        for (int j = 1; j < half; j++) add_ext(&row[j], &row[j - 1], &base);
        normalise_row(&table[(size_t)i * half], row, prefix, half);
        add_ext(&base, &row[half - 1], &row[half - 1]); /* 2^(w-1)·base doubled: the next row's base */
    }
    PyMem_Free(row);
    PyMem_Free(prefix);
    PyMem_Free(self->table);
    self->table = table;
    self->window = window;
    self->rows = rows;
    return 0;
}

static void FixedBase_dealloc(FixedBase *self) {
    PyMem_Free(self->table);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *FixedBase_multiply(FixedBase *self, PyObject *arg) {
    Py_buffer scalar;
    if (!self->table) {
        PyErr_SetString(PyExc_ValueError, "FixedBase not initialised");
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &scalar, PyBUF_SIMPLE) < 0) return NULL;
    if (scalar.len != 32) {
        PyBuffer_Release(&scalar);
        PyErr_SetString(PyExc_ValueError, "scalar: expected 32 big-endian bytes");
        return NULL;
    }
    uint64_t k[4];
    load_be(k, scalar.buf);
    PyBuffer_Release(&scalar);
    if (k[3] >> (SCALAR_BITS - 192)) {
        PyErr_SetString(PyExc_ValueError, "scalar must be below 2^254");
        return NULL;
    }
    ext_point p;
    fixed_multiply(&p, self, k);
    fe zinv, x, y;
    fe_inv(&zinv, &p.z);
    fe_mul(&x, &p.x, &zinv);
    fe_mul(&x, &x, &ISO_S_INV); /* back to circomlib's coordinates */
    fe_mul(&y, &p.y, &zinv);
    uint64_t plain[4];
    unsigned char out[64];
    fe_to_plain(plain, &x);
    store_be(out, plain);
    fe_to_plain(plain, &y);
    store_be(out + 32, plain);
    return PyBytes_FromStringAndSize((const char *)out, 64);
}

static PyMethodDef FixedBase_methods[] = {
    {"multiply", (PyCFunction)FixedBase_multiply, METH_O,
     "multiply(scalar: bytes) -> bytes\n--\n\nscalar·point for a 32-byte big-endian scalar below 2^254, as affine x || y (64 bytes)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FixedBaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "aep2._native.FixedBase",
    .tp_doc = PyDoc_STR("FixedBase(point: bytes, window: int)\n--\n\n"
                        "Signed-window table of one BabyJubJub point (64 bytes, affine x || y big-endian) "
                        "for scalars below 2^254: ceil(255 / window) rows of 2^(window-1) points, "
                        "96 bytes each; window in [2, 12]. ValueError for a coordinate not below r. "
                        "The point is not checked to be on the curve: callers check it."),
    .tp_basicsize = sizeof(FixedBase),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)FixedBase_init,
    .tp_dealloc = (destructor)FixedBase_dealloc,
    .tp_methods = FixedBase_methods,
};

/* ---------------------------------------------------------------- module functions */

static PyObject *native_poseidon(PyObject *module, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = data.len / 32;
    fe inputs[POSEIDON_MAX_INPUTS], digest;
    int ok = data.len % 32 == 0 && n >= 1 && n <= POSEIDON_MAX_INPUTS;
    for (Py_ssize_t i = 0; ok && i < n; i++) ok = fe_from_be(&inputs[i], (const unsigned char *)data.buf + 32 * i);
    PyBuffer_Release(&data);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "poseidon: expected 1 to 5 BN254 field elements of 32 big-endian bytes each");
        return NULL;
    }
    poseidon_hash(&digest, inputs, (int)n);
    uint64_t plain[4];
    unsigned char out[32];
    fe_to_plain(plain, &digest);
    store_be(out, plain);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyObject *native_eddsa_verify(PyObject *module, PyObject *args) {
    PyObject *b8_obj, *key_obj;
    Py_buffer challenge, s_buf;
    if (!PyArg_ParseTuple(args, "O!O!y*y*", &FixedBaseType, &b8_obj, &FixedBaseType, &key_obj, &challenge, &s_buf))
        return NULL;
    const FixedBase *b8 = (const FixedBase *)b8_obj, *key8 = (const FixedBase *)key_obj;
    fe in[5];
    uint64_t s[4];
    int ok = b8->table && key8->table && challenge.len == 5 * 32 && s_buf.len == 32;
    if (ok) {
        load_be(s, s_buf.buf);
        for (int i = 0; ok && i < 5; i++) ok = fe_from_be(&in[i], (const unsigned char *)challenge.buf + 32 * i);
    }
    PyBuffer_Release(&challenge);
    PyBuffer_Release(&s_buf);
    if (!ok || !less_than(s, SUBGROUP_ORDER) || !on_curve(&in[0], &in[1])) Py_RETURN_FALSE;

    /* hm = Poseidon(R8x, R8y, Ax, Ay, M); check S·B8 == R8 + hm·(8·A), on the a = -1 curve. */
    fe hm;
    uint64_t hm_plain[4];
    poseidon_hash(&hm, in, 5);
    fe_to_plain(hm_plain, &hm);
    ext_point left, right, r8;
    ext_from_babyjub(&r8, &in[0], &in[1]);
    fixed_multiply(&left, b8, s);
    fixed_multiply(&right, key8, hm_plain);
    add_ext(&right, &right, &r8);
    /* Projective comparison: X1·Z2 == X2·Z1 and Y1·Z2 == Y2·Z1 (Z never 0 on this curve). */
    fe a, b;
    fe_mul(&a, &left.x, &right.z);
    fe_mul(&b, &right.x, &left.z);
    if (!fe_equal(&a, &b)) Py_RETURN_FALSE;
    fe_mul(&a, &left.y, &right.z);
    fe_mul(&b, &right.y, &left.z);
    return PyBool_FromLong(fe_equal(&a, &b));
}

static PyObject *native_set_backend(PyObject *module, PyObject *arg) {
    const char *name = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (!name) {
        PyErr_SetString(PyExc_TypeError, "backend: expected 'adx' or 'portable'");
        return NULL;
    }
    if (strcmp(name, "portable") == 0) {
        use_adx = 0;
    } else if (strcmp(name, "adx") == 0 && cpu_has_adx()) {
        use_adx = 1;
    } else {
        PyErr_Format(PyExc_ValueError, "backend %s: not available on this CPU (choose from %s)", name,
                     cpu_has_adx() ? "'adx', 'portable'" : "'portable'");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *native_backend(PyObject *module, PyObject *unused) {
    return PyUnicode_FromString(use_adx ? "adx" : "portable");
}

static PyMethodDef native_methods[] = {
    {"backend", native_backend, METH_NOARGS,
     "backend() -> str\n--\n\nThe field multiplication in use: 'adx' (x86-64 MULX/ADCX/ADOX, chosen at "
     "import when the CPU has BMI2 and ADX) or 'portable' (C)."},
    {"set_backend", native_set_backend, METH_O,
     "set_backend(name: str) -> None\n--\n\nUse 'adx' or 'portable' field multiplication from now on "
     "(both compute the same values; the tests run each). ValueError when the CPU lacks it."},
    {"poseidon", native_poseidon, METH_O,
     "poseidon(inputs: bytes) -> bytes\n--\n\ncircomlib Poseidon(n) of n = len(inputs) / 32 (1 to 5) "
     "big-endian field elements; the 32-byte big-endian digest. ValueError for any other input."},
    {"eddsa_verify", native_eddsa_verify, METH_VARARGS,
     "eddsa_verify(b8: FixedBase, eight_a: FixedBase, challenge: bytes, s: bytes) -> bool\n--\n\n"
     "circomlib EdDSAPoseidonVerifier's check, given tables of B8 and of 8·A: challenge is "
     "R8x || R8y || Ax || Ay || M (5 x 32 bytes big-endian), s is S (32 bytes). False unless "
     "every element is below r, S < l, R8 is on the curve and S·B8 == R8 + Poseidon(challenge)·8·A."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "aep2._native",
    "BN254 field, circomlib Poseidon and BabyJubJub EdDSA-Poseidon verification in C "
    "(see aep2.poseidon and aep2.eddsa).",
    -1, native_methods,
};

PyMODINIT_FUNC PyInit__native(void) {
    use_adx = cpu_has_adx();
    if (PyType_Ready(&FixedBaseType) < 0) return NULL;
    PyObject *module = PyModule_Create(&native_module);
    if (!module) return NULL;
    Py_INCREF(&FixedBaseType);
    if (PyModule_AddObject(module, "FixedBase", (PyObject *)&FixedBaseType) < 0) {
        Py_DECREF(&FixedBaseType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
