/* SPDX-License-Identifier: GPL-2.0 */
/*
 * DNS header checks, the QNAME walk and the keyed suffix hash.
 *
 * The name hash (mirrored by ccxdp/hashing.py, kept equal by tests/test_parity.py):
 *   h = k0
 *   for each label, from the one nearest the root to the leftmost:
 *       h = (h ^ label_len) * MUL_LABEL
 *       for each 8-byte little-endian word w of the label, lower-cased, last word zero-padded:
 *           h = rotl64((h ^ w) * MUL_WORD, 29)
 *       that label's suffix (the label and everything right of it) hashes to fmix64(h ^ k1)
 * Chaining from the root means one pass yields the hash of every suffix, at a cost
 * proportional to the name's words. k0 and k1 are random per installation, so names cannot be
 * crafted offline to collide with a listed one.
 */
#ifndef CCXDP_DNS_H
#define CCXDP_DNS_H

#include "ccxdp_shared.h"
#include "maps.h"

struct dnshdr {
	__be16 id;
	__be16 flags;
	__be16 qdcount;
	__be16 ancount;
	__be16 nscount;
	__be16 arcount;
};

/* Masks on bpf_ntohs(flags). */
#define DNS_FLAG_QR 0x8000
#define DNS_OPCODE_MASK 0x7800
#define DNS_OPCODE_QUERY 0x0000

#define DNS_LABEL_TYPE_MASK 0xc0 /* 0xc0: compression pointer; 0x40, 0x80: reserved */

/* Words the suffix-hash loop may need: one-byte labels take a word each, and longer labels
 * take fewer words per byte, so 127 labels is the worst case; one more iteration sees the end. */
#define DNS_MAX_NAME_WORDS (DNS_MAX_LABELS + 1)

/*
 * Look one suffix hash up in the name map. Defined in ccxdp.bpf.c: bcc rewrites map calls
 * only in the main file, so headers leave map access to it.
 */
static __always_inline struct ccxdp_entry *lookup_name(__u64 suffix_hash);

#define HASH_MUL_LABEL 0x9e3779b97f4a7c15ULL
#define HASH_MUL_WORD 0xc2b2ae3d27d4eb4fULL

static __always_inline struct dnshdr *parse_dnshdr(struct cursor *c)
{
	struct dnshdr *dns = c->pos;

	if ((void *)(dns + 1) > c->end)
		return NULL;
	c->pos = dns + 1;
	return dns;
}

static __always_inline __u64 rotl64(__u64 x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static __always_inline __u64 fmix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
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

/*
 * Find the labels of the QNAME copied into s->name (avail bytes valid; more_follows when the
 * DNS payload went on past the copy). One bounded pass over label lengths only. Fills
 * s->label_off, s->nlabels and s->name_len. Returns CCXDP_CONTINUE, or a malformed reason.
 */
static __always_inline int dns_find_labels(struct ccxdp_scratch *s, __u32 avail, int more_follows)
{
	__u32 off = 0;

	for (int i = 0; i <= DNS_MAX_LABELS; i++) {
		__u32 len = s->name[off & 0xff];

		if (len == 0) {
			s->nlabels = i;
			s->name_len = off + 1;
			return CCXDP_CONTINUE;
		}
		if (len & DNS_LABEL_TYPE_MASK)
			return CCXDP_MAL_LABEL_TYPE;
		s->label_off[i & DNS_MAX_LABELS] = off;
		off += len + 1;
		if (off >= avail)
			return more_follows ? CCXDP_MAL_NAME_LEN : CCXDP_MAL_TRUNCATED;
	}
	return CCXDP_MAL_NAME_LEN;
}

/*
 * Hash every suffix of the name, from the root outwards, and look each one up; leaves the
 * most specific matching entry in s->match. An exact entry matches only the whole name, a
 * subtree entry any suffix.
 *
 * Verifier: the loop state (hash, label, pos, rem) is kept in the scratch map value, not in
 * registers. Loads from a map value are unknown scalars to the verifier, so every path through
 * one iteration (label start or not, hit or miss) reaches the next iteration in the same state
 * and is pruned there: the work to verify grows with the iteration bound (one word each), not
 * with the product of paths that made nested per-label/per-byte loops fail to load.
 */
static __always_inline void dns_match_suffixes(struct ccxdp_scratch *s,
					       const struct ccxdp_hash_key *key)
{
	s->hash = key->k0;
	s->label = s->nlabels;
	s->rem = 0;
	s->matched = 0;

	for (int i = 0; i < DNS_MAX_NAME_WORDS; i++) {
		__u32 rem = s->rem;
		__u32 pos;
		__u64 h, w, take;

		if (rem == 0) {
			/* Start the next label to the left, or stop after the leftmost. */
			__u32 label = s->label;
			__u32 off;

			if (label == 0)
				break;
			label--;
			s->label = label;
			off = s->label_off[label & DNS_MAX_LABELS];
			rem = s->name[off & 0xff];
			s->pos = off + 1;
			s->hash = (s->hash ^ rem) * HASH_MUL_LABEL;
		}
		pos = s->pos;
		take = rem < 8 ? rem : 8;
		w = *(__u64 *)&s->name[pos & 0xff];
		w &= ~0ULL >> ((8 - take) * 8);
		h = rotl64((s->hash ^ lower_word(w)) * HASH_MUL_WORD, 29);
		s->hash = h;
		s->pos = pos + take;
		s->rem = rem - take;
		if (rem == take) {
			/* A label is complete: h now covers one more suffix. */
			__u64 suffix = fmix64(h ^ key->k1);
			struct ccxdp_entry *e = lookup_name(suffix);

			if (e && ((e->flags & CCXDP_ENTRY_SUBTREE) || s->label == 0)) {
				s->match = *e;
				s->matched = 1;
			}
		}
	}
}

#endif /* CCXDP_DNS_H */
