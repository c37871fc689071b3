/* SPDX-License-Identifier: GPL-2.0 */
/*
 * DNS header checks, the QNAME walk and the keyed suffix hash.
 *
 * The name hash (mirrored by ccxdp/datapath/hashing.py, kept equal by
 * tests/program/test_parity.py):
 *   S = k0
 *   for each label, from the one nearest the root to the leftmost:
 *       split the label in wire form (its length byte, then its bytes lower-cased) into
 *       8-byte little-endian words w_j, the last zero-padded, lo/hi their 32-bit halves;
 *       a = sum_j (lo_j + nh[2j]) * (hi_j + nh[2j+1])      (additions mod 2^32, sum mod 2^64)
 *       b = sum_j (lo_j + nh[2j+4]) * (hi_j + nh[2j+5])
 *       S = mix(mix(S ^ a) ^ b),  mix(x) = (x ^ x >> 32) * HASH_MUL
 *       the suffix that starts at this label has the map key S ^ k1
 * a and b are UMAC's NH with independent key words: for two different labels each collides
 * with probability at most 2^-32 over the random key, whatever the labels, so a twin of a
 * listed name cannot be crafted without the key, and unrelated names collide only by chance
 * (about 2^-64). mix is a bijection, so labels that differ keep differing up the chain.
 * Chaining from the root gives every suffix's key in one pass, at a cost proportional to the
 * name's words. The length byte keeps "a" apart from "a\0".
 */
#ifndef CCXDP_DNS_H
#define CCXDP_DNS_H

#include "ccxdp_shared.h"
#include "dns_wire.h"
#include "maps.h"
#include "name_hash.h"

/* Words the suffix-hash loop may need: a one-byte label and its length byte fill one word, and
 * longer labels take fewer words per byte, so 127 labels is the worst case; one more
 * iteration sees the end. */
#define DNS_MAX_NAME_WORDS (DNS_MAX_LABELS + 1)

/*
 * Look one suffix hash up in a buffer of the name table: its entry packed as
 * action | flags << 4 | category << 8, or -1. Defined in ccxdp.bpf.c: bcc rewrites map calls
 * only in the main file, so headers leave map access to it.
 */
static __always_inline __s64 lookup_name(__u64 suffix_hash, __u32 buffer);

static __always_inline struct dnshdr *parse_dnshdr(struct cursor *c)
{
	struct dnshdr *dns = c->pos;

	if ((void *)(dns + 1) > c->end)
		return NULL;
	c->pos = dns + 1;
	return dns;
}

/* Whether a DNS header is one that is judged: a query (QR clear), standard opcode, one
 * question. */
static __always_inline int dns_is_judged_query(const struct dnshdr *dns)
{
	__u16 flags = bpf_ntohs(dns->flags);

	return !(flags & DNS_FLAG_QR) && (flags & DNS_OPCODE_MASK) == DNS_OPCODE_QUERY &&
	       dns->qdcount == bpf_htons(1);
}

/*
 * Why the name loops take offsets from the scratch value and reload the packet pointers from
 * ctx: the parse paths before them (VLAN tags, IP options, IPv6 extension headers) leave
 * packet pointers with different offsets and proven ranges, and a loop that kept one of them
 * live would be verified once per path. Offsets loaded from a map value are unknown scalars,
 * identical on every path.
 */
static __always_inline __u8 *qname_start(struct xdp_md *ctx, struct ccxdp_scratch *s)
{
	void *data = (void *)(long)ctx->data;

	return data + (s->qoff & CCXDP_MAX_FRAME_OFF);
}

/*
 * Find the labels of the QNAME. One bounded pass over label lengths only, checking each byte
 * against the frame's end and the DNS payload's end before reading it. Fills s->label_off,
 * s->nlabels and s->name_len. Returns CCXDP_CONTINUE or a malformed reason.
 */
static __always_inline int dns_find_labels(struct xdp_md *ctx, struct ccxdp_scratch *s)
{
	__u8 *qname = qname_start(ctx, s);
	void *data_end = (void *)(long)ctx->data_end;
	__u32 avail = s->avail, off = 0;

	for (int i = 0; i <= DNS_MAX_LABELS; i++) {
		__u8 *p = qname + (off & 0xff);
		__u32 len;

		if (off >= avail || (void *)(p + 1) > data_end)
			return CCXDP_MAL_TRUNCATED;
		len = *p;
		if (len == 0) {
			s->nlabels = i;
			s->name_len = off + 1;
			return CCXDP_CONTINUE;
		}
		if (len & DNS_LABEL_TYPE_MASK)
			return CCXDP_MAL_LABEL_TYPE;
		s->label_off[i & DNS_MAX_LABELS] = off;
		off += len + 1;
		/* The root's zero byte must still fit within DNS_MAX_NAME_LEN. */
		if (off >= DNS_MAX_NAME_LEN)
			return CCXDP_MAL_NAME_LEN;
	}
	return CCXDP_MAL_NAME_LEN;
}

/*
 * Eight bytes of the name from offset pos. Past the frame's end they read as zero: that only
 * happens for the last word of the last label when the question ends the frame, so the copy
 * through the helper is off the common path.
 */
static __always_inline __u64 load_name_word(struct xdp_md *ctx, struct ccxdp_scratch *s,
					    __u32 pos)
{
	__u8 *p = qname_start(ctx, s) + (pos & 0xff);
	void *data_end = (void *)(long)ctx->data_end;
	__u64 w = 0, left;

	if ((void *)(p + 8) <= data_end)
		return *(__u64 *)__builtin_assume_aligned(p, 8); /* unaligned loads are fine here */
	left = data_end - (void *)p;
	if (left >= 1 && left < 8)
		bpf_xdp_load_bytes(ctx, (s->qoff & CCXDP_MAX_FRAME_OFF) + (pos & 0xff), &w, left);
	return w;
}

/*
 * Hash every suffix of the name, from the root outwards, and look each one up; leaves the most
 * specific matching entry in s->match. An entry matches the whole name unless NOT_SELF, and a
 * name below it only with SUBTREE; ALLOW_NAME and ALLOW_BELOW turn those matches into allows.
 *
 * Verifier: the loop's offsets (label, pos, rem) live in the scratch map value, not in
 * registers. Loads from a map value are unknown scalars to the verifier, so every path through
 * one iteration (label start or not, hit or miss) reaches the next iteration in the same state
 * and is pruned there: the work to verify grows with the iteration bound (one word each), not
 * with the product of paths that made nested per-label/per-byte loops fail to load. The hash
 * state and the NH sums stay in registers: they are never an offset or a bound, so the
 * verifier never tracks their values and they do not keep states apart.
 */
static __always_inline void dns_match_suffixes(struct xdp_md *ctx, struct ccxdp_scratch *s,
					       const struct ccxdp_hash_key *key)
{
	__u64 state = key->k0, a = 0, b = 0;

	s->label = s->nlabels;
	s->rem = 0;
	s->matched = 0;

	for (int i = 0; i < DNS_MAX_NAME_WORDS; i++) {
		__u32 rem = s->rem, pos, label, word;
		__u64 w, take, suffix;
		const __u32 *nh;
		__s64 found;
		__u32 flags;

		if (rem == 0) {
			/* Start the next label to the left, or stop after the leftmost. */
			label = s->label;
			if (label == 0)
				break;
			label--;
			s->label = label;
			s->word = 0;
			a = 0;
			b = 0;
			pos = s->label_off[label & DNS_MAX_LABELS];
			w = load_name_word(ctx, s, pos);
			rem = (w & 0xff) + 1; /* the length byte and the label */
		} else {
			pos = s->pos;
			w = load_name_word(ctx, s, pos);
		}
		take = rem < 8 ? rem : 8;
		w = lower_word(w & (~0ULL >> ((8 - take) * 8)));
		word = s->word;
		nh = &key->nh[(word & 7) * 2];
		a += nh_term(w, nh[0], nh[1]);
		b += nh_term(w, nh[4], nh[5]);
		s->word = word + 1;
		s->pos = pos + take;
		s->rem = rem - take;
		if (rem != take)
			continue;
		/* A label is complete: state now covers one more suffix. */
		state = chain_label(state, a, b);
		suffix = state ^ key->k1;
		found = lookup_name(suffix, s->buffer);
		if (found < 0)
			continue;
		flags = (found >> 4) & 0xf;
		/* The leftmost label's suffix is the name itself; the others are above it. */
		if (s->label == 0 ? (flags & CCXDP_ENTRY_NOT_SELF) : !(flags & CCXDP_ENTRY_SUBTREE))
			continue;
		s->match.action = found & 0xf;
		s->match.flags = flags;
		s->match.category = found >> 8;
		s->matched = 1;
		if (s->label == 0 ? (flags & CCXDP_ENTRY_ALLOW_NAME)
				  : (flags & CCXDP_ENTRY_ALLOW_BELOW)) {
			s->match.action = CCXDP_ACTION_ALLOW;
			s->match.category = 0;
		}
	}
}

#endif /* CCXDP_DNS_H */
