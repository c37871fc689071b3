/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The arithmetic of the name hash, shared by the XDP program (dns.h) and the control plane's
 * C bulk helper (ccxdp/datapath/bulk.c), so the two compile the very same definitions; the
 * hash itself is described in dns.h, and ccxdp/datapath/hashing.py mirrors it in Python
 * (tests/program/test_parity.py holds all three equal). Plain C on __u32/__u64: no BPF helpers.
 */
#ifndef CCXDP_NAME_HASH_H
#define CCXDP_NAME_HASH_H

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

#define HASH_MUL 0xff51afd7ed558ccdULL

/* The words are read in the host's order; the hash is defined on little-endian words. */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "ccxdp's name hash reads little-endian words"
#endif

/* A bijection of 64 bits whose top bits (the bucket index) depend on every input
 * bit. */
static __always_inline __u64 mix64(__u64 x)
{
	return (x ^ (x >> 32)) * HASH_MUL;
}

/* One term of NH: the two 32-bit halves of a word, each plus a key word mod 2^32, multiplied
 * into 64 bits. */
static __always_inline __u64 nh_term(__u64 w, __u32 k_lo, __u32 k_hi)
{
	__u32 lo = (__u32)w + k_lo;
	__u32 hi = (__u32)(w >> 32) + k_hi;

	return (__u64)lo * hi;
}

/* ASCII A-Z to a-z in all eight bytes at once, without branches; other bytes unchanged. */
static __always_inline __u64 lower_word(__u64 w)
{
	__u64 heptets = w & 0x7f7f7f7f7f7f7f7fULL;
	__u64 ge_a = heptets + 0x3f3f3f3f3f3f3f3fULL; /* bit 7 set where byte >= 'A' */
	__u64 gt_z = heptets + 0x2525252525252525ULL; /* bit 7 set where byte > 'Z' */
	__u64 upper = ge_a & ~gt_z & ~w & 0x8080808080808080ULL;

	return w | (upper >> 2);
}

/* The state after one more label: its NH sums a and b folded into the chain. */
static __always_inline __u64 chain_label(__u64 state, __u64 a, __u64 b)
{
	return mix64(mix64(state ^ a) ^ b);
}

/*
 * A name's first bucket in a table of nb buckets: its hash's top 32 bits scaled to [0, nb)
 * (a multiply and a shift, no division). Monotonic in the hash, so a sorted list of hashes
 * fills the buckets in order, and the top bits that pick it are not among the 48 a bucket
 * stores.
 */
static __always_inline __u32 name_bucket_first(__u64 hash, __u32 nb)
{
	return (__u32)(((hash >> 32) * nb) >> 32);
}

/* Its second bucket: an offset of 1 to nb - 1 from the first, given by the low 32 bits (which
 * the bucket stores, so the first is found again from the second and the tag). */
static __always_inline __u32 name_bucket_second(__u64 hash, __u32 first, __u32 nb)
{
	__u32 b = first + 1 + (__u32)(((hash & 0xffffffffULL) * (nb - 1)) >> 32);

	return b >= nb ? b - nb : b;
}

#endif /* CCXDP_NAME_HASH_H */
