// SPDX-License-Identifier: GPL-2.0
/*
 * Bulk work of the control plane on a million names, in C: hashing (with the XDP program's
 * own arithmetic, bpf/name_hash.h), sorting, merging and diffing sorted hash arrays, and
 * building (and reading back) the name table's buckets. Python calls it through ctypes (ccxdp/datapath/bulk.py)
 * and keeps a pure-Python version of each function that the tests hold equal to this one.
 *
 * Arrays are caller-owned; nothing here keeps state or allocates beyond a sort's scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint8_t __u8;
typedef uint16_t __u16;
typedef uint32_t __u32;
typedef uint64_t __u64;
typedef uint16_t __be16;
typedef uint32_t __be32;

#include "ccxdp_shared.h"
#include "name_hash.h"

#define NH_KEY_WORDS 20
#define MAX_NAME_LEN 255
#define MAX_LABEL_LEN 63

/* Buckets that hold the list no better than this many evictions are refused. */
#define EVICTIONS_MAX 4096

#define SLOTS CCXDP_NAME_BUCKET_SLOTS
#define SPILLED CCXDP_NB_SPILLED

struct hash_key {
	__u64 k0;
	__u64 k1;
	__u32 nh[NH_KEY_WORDS];
};

/* The NH sums of one label in wire form (length byte, then the bytes), as dns.h computes
 * them word by word. */
static void label_sums(const unsigned char *label, unsigned len, const struct hash_key *key,
		       __u64 *a, __u64 *b)
{
	unsigned char buf[MAX_LABEL_LEN + 1 + 8];
	unsigned words = (len + 1 + 7) / 8;

	memset(buf, 0, sizeof(buf));
	buf[0] = (unsigned char)len;
	memcpy(buf + 1, label, len);
	*a = 0;
	*b = 0;
	for (unsigned j = 0; j < words; j++) {
		__u64 w;

		memcpy(&w, buf + 8 * j, 8);
		w = lower_word(w);
		*a += nh_term(w, key->nh[2 * j], key->nh[2 * j + 1]);
		*b += nh_term(w, key->nh[2 * j + 4], key->nh[2 * j + 5]);
	}
}

/*
 * Hash names given as text, one per line ('\n'), already normalized (dotted, no trailing dot).
 * Writes out[i] for the i-th name; returns the number of names, or -(i + 1) when the i-th is
 * not a valid name (empty label, label over 63 bytes, over 255 bytes in wire form).
 */
long ccxdp_hash_names(const char *text, size_t len, const struct hash_key *key, __u64 *out,
		      size_t max_out)
{
	size_t pos = 0, count = 0;

	while (pos < len && count < max_out) {
		size_t end = pos, starts[128];
		unsigned nlabels = 0;
		__u64 state = key->k0;

		while (end < len && text[end] != '\n')
			end++;
		if (end - pos + 2 > MAX_NAME_LEN || end == pos)
			return -(long)(count + 1);
		starts[nlabels++] = pos;
		for (size_t i = pos; i < end; i++) {
			if (text[i] == '.') {
				if (nlabels >= 128)
					return -(long)(count + 1);
				starts[nlabels++] = i + 1;
			}
		}
		for (unsigned l = nlabels; l-- > 0;) {
			size_t from = starts[l];
			size_t to = l + 1 < nlabels ? starts[l + 1] - 1 : end;
			__u64 a, b;

			if (to <= from || to - from > MAX_LABEL_LEN)
				return -(long)(count + 1);
			label_sums((const unsigned char *)text + from, (unsigned)(to - from), key, &a,
				   &b);
			state = chain_label(state, a, b);
		}
		out[count++] = state ^ key->k1;
		pos = end + 1;
	}
	return (long)count;
}

/* Sort hashes ascending, carrying each one's value along: LSD radix sort, 16 bits a pass. */
int ccxdp_sort_pairs(__u64 *h, __u64 *v, size_t n)
{
	__u64 *th = malloc(n * sizeof(*th) + 1), *tv = malloc(n * sizeof(*tv) + 1);
	size_t *count = calloc(65536, sizeof(*count));

	if (!th || !tv || !count) {
		free(th);
		free(tv);
		free(count);
		return -1;
	}
	for (unsigned shift = 0; shift < 64; shift += 16) {
		size_t sum = 0;

		memset(count, 0, 65536 * sizeof(*count));
		for (size_t i = 0; i < n; i++)
			count[(h[i] >> shift) & 0xffff]++;
		for (size_t d = 0; d < 65536; d++) {
			size_t c = count[d];

			count[d] = sum;
			sum += c;
		}
		for (size_t i = 0; i < n; i++) {
			size_t at = count[(h[i] >> shift) & 0xffff]++;

			th[at] = h[i];
			tv[at] = v[i];
		}
		memcpy(h, th, n * sizeof(*h));
		memcpy(v, tv, n * sizeof(*v));
	}
	free(th);
	free(tv);
	free(count);
	return 0;
}

/* Index of the first repeated hash in a sorted array, or -1. */
long ccxdp_first_repeat(const __u64 *h, size_t n)
{
	for (size_t i = 1; i < n; i++)
		if (h[i] == h[i - 1])
			return (long)i;
	return -1;
}

/*
 * out = (cur without the hashes in del) with the pairs of add put in (an added hash that cur
 * already holds takes add's value). All three inputs sorted; out has room for cn + an.
 * Returns the length of out.
 */
size_t ccxdp_merge(const __u64 *ch, const __u64 *cv, size_t cn, const __u64 *dh, size_t dn,
		   const __u64 *ah, const __u64 *av, size_t an, __u64 *oh, __u64 *ov)
{
	size_t i = 0, d = 0, a = 0, o = 0;

	while (i < cn || a < an) {
		if (a < an && (i >= cn || ah[a] <= ch[i])) {
			if (i < cn && ah[a] == ch[i])
				i++;
			oh[o] = ah[a];
			ov[o++] = av[a++];
			continue;
		}
		while (d < dn && dh[d] < ch[i])
			d++;
		if (d < dn && dh[d] == ch[i]) {
			i++;
			continue;
		}
		oh[o] = ch[i];
		ov[o++] = cv[i++];
	}
	return o;
}

/*
 * Compare two sorted listings (old, new). Writes the positions in new of hashes old lacks
 * (added), the positions in old of hashes new lacks (removed), and the positions in new of
 * hashes both hold with different values (changed); counts[0..2] get how many of each.
 */
void ccxdp_diff(const __u64 *oh, const __u64 *ov, size_t on, const __u64 *nh, const __u64 *nv,
		size_t nn, size_t *added, size_t *removed, size_t *changed, size_t *counts)
{
	size_t i = 0, j = 0, na = 0, nr = 0, nc = 0;

	while (i < on || j < nn) {
		if (j >= nn || (i < on && oh[i] < nh[j])) {
			removed[nr++] = i++;
		} else if (i >= on || nh[j] < oh[i]) {
			added[na++] = j++;
		} else {
			if (ov[i] != nv[j])
				changed[nc++] = j;
			i++;
			j++;
		}
	}
	counts[0] = na;
	counts[1] = nr;
	counts[2] = nc;
}

static unsigned used_of(const struct ccxdp_name_bucket *b)
{
	return CCXDP_NB_USED(b->meta);
}

static unsigned primary_of(const struct ccxdp_name_bucket *b)
{
	return CCXDP_NB_PRIMARY(b->meta);
}

static void set_counts(struct ccxdp_name_bucket *b, unsigned used, unsigned primary)
{
	b->meta = (unsigned char)((b->meta & SPILLED) | used | primary << 3);
}

static void put_slot(struct ccxdp_name_bucket *b, unsigned at, __u64 h, __u64 v)
{
	b->tag_lo[at] = (__u32)h;
	b->tag_hi[at] = (__u16)(h >> 32);
	b->what[at] = (unsigned char)((v & 0xf) | ((v >> 8) & 0xf) << 4);
	b->category[at] = (__u16)(v >> 16);
}

static void move_slot(struct ccxdp_name_bucket *b, unsigned to, unsigned from)
{
	b->tag_lo[to] = b->tag_lo[from];
	b->tag_hi[to] = b->tag_hi[from];
	b->what[to] = b->what[from];
	b->category[to] = b->category[from];
	b->tag_lo[from] = 0;
	b->tag_hi[from] = 0;
	b->what[from] = 0;
	b->category[from] = 0;
}

/* The full hash of the name in slot at of bucket nr (first-bucket or second-bucket slot). */
static __u64 slot_hash(const struct ccxdp_name_bucket *b, __u32 nr, unsigned at, __u32 nb)
{
	__u32 lo = b->tag_lo[at], first = nr, top, least;

	if (at >= primary_of(b)) {
		/* The inverse of name_bucket_second: the offset comes from the stored low bits. */
		__u32 off = 1 + (__u32)(((__u64)lo * (nb - 1)) >> 32);

		first = nr >= off ? nr - off : nr + nb - off;
	}
	/* The least top-32-bit value whose first bucket is this one; with nb >= 2^16 those
	 * values span at most 2^16, so the stored 16 bits pick exactly one of them. */
	least = (__u32)((((__u64)first << 32) + nb - 1) / nb);
	top = (least & ~0xffffU) | b->tag_hi[at];
	if (top < least)
		top += 0x10000;
	return (__u64)top << 32 | lo;
}

/* Pairs (hash, value) of slot at, as the control plane keeps them (shared.pack_entry). */
static __u64 slot_value(const struct ccxdp_name_bucket *b, unsigned at)
{
	return (__u64)(b->what[at] & 0xf) | (__u64)(b->what[at] >> 4) << 8 |
	       (__u64)b->category[at] << 16;
}

/*
 * Build one buffer of the name table (bpf/maps.h) from n sorted, distinct hashes and their
 * values: each name in its first bucket while that has room (sorted hashes fill the buckets in
 * order), then each name that found it full in its second bucket, after the names that
 * belong there. A full second bucket gives up one of its own names to that name's second
 * bucket (cuckoo hashing), EVICTIONS_MAX times at most in all. The buckets must be zero.
 * Returns 0; -1 when value *bad does not fit a slot (action or flags over 15); -2 when the
 * names did not fit (never seen below 3.5 names a bucket); -3 out of memory.
 */
int ccxdp_build_buckets(const __u64 *h, const __u64 *v, size_t n, __u32 nb,
			struct ccxdp_name_bucket *out, size_t *bad)
{
	size_t *spill = NULL, nspill = 0, evictions = 0;

	for (size_t i = 0; i < n; i++) {
		struct ccxdp_name_bucket *b = &out[name_bucket_first(h[i], nb)];
		unsigned used = used_of(b);

		if ((v[i] & ~0xffff0f0fULL) != 0) {
			*bad = i;
			free(spill);
			return -1;
		}
		if (used < SLOTS) {
			put_slot(b, used, h[i], v[i]);
			set_counts(b, used + 1, used + 1);
			continue;
		}
		if (!spill && !(spill = malloc(n * sizeof(*spill))))
			return -3;
		spill[nspill++] = i;
	}
	for (size_t k = 0; k < nspill; k++) {
		__u64 ch = h[spill[k]], cv = v[spill[k]];
		__u32 first = name_bucket_first(ch, nb);

		for (;;) {
			__u32 second = name_bucket_second(ch, first, nb);
			struct ccxdp_name_bucket *b = &out[second];
			unsigned used = used_of(b), primary = primary_of(b), at;
			__u64 eh, ev;

			out[first].meta |= SPILLED;
			if (used < SLOTS) {
				put_slot(b, used, ch, cv);
				set_counts(b, used + 1, primary);
				break;
			}
			if (primary == 0 || ++evictions > EVICTIONS_MAX) {
				free(spill);
				return -2;
			}
			/* Give up one of the bucket's own names (a different one each time round),
			 * keeping its own names before the others: the last own name fills the gap,
			 * the last other name fills that one's slot. */
			at = (unsigned)(evictions % primary);
			eh = slot_hash(b, second, at, nb);
			ev = slot_value(b, at);
			if (at != primary - 1)
				move_slot(b, at, primary - 1);
			if (used - 1 != primary - 1)
				move_slot(b, primary - 1, used - 1);
			put_slot(b, used - 1, ch, cv);
			set_counts(b, used, primary - 1);
			ch = eh;
			cv = ev;
			first = second;
		}
	}
	free(spill);
	return 0;
}

/* Set the name filter's bits of n hashes in its nb words (bpf/maps.h). */
void ccxdp_filter_set(const __u64 *h, size_t n, __u32 nb, __u64 *words)
{
	for (size_t i = 0; i < n; i++)
		words[name_bucket_first(h[i], nb)] |= CCXDP_NAME_FILTER_BITS(h[i]);
}

/* The (hash, value) pairs one buffer of nb buckets holds, in bucket order; returns how many. */
size_t ccxdp_read_buckets(const struct ccxdp_name_bucket *b, __u32 nb, __u64 *h, __u64 *v)
{
	size_t count = 0;

	for (__u32 nr = 0; nr < nb; nr++) {
		for (unsigned at = 0; at < used_of(&b[nr]); at++) {
			h[count] = slot_hash(&b[nr], nr, at, nb);
			v[count++] = slot_value(&b[nr], at);
		}
	}
	return count;
}

/*
 * A keyed hash of each line of text ('\n' ends a line; a '\r' before it is not part of it),
 * made like a name's (ASCII case folded): the line cut into pieces of at most 63 bytes, each
 * hashed with NH and chained. Writes the hash and the start offset of each line; returns the number of lines.
 * Feed syncs compare two versions of a file by these (feeds.py).
 */
size_t ccxdp_line_hashes(const char *text, size_t len, const struct hash_key *key, __u64 *out,
			 __u64 *starts, size_t max_out)
{
	size_t pos = 0, count = 0;

	while (pos < len && count < max_out) {
		size_t end = pos, stop;
		__u64 state = key->k0;

		while (end < len && text[end] != '\n')
			end++;
		stop = end > pos && text[end - 1] == '\r' ? end - 1 : end;
		for (size_t from = pos; from < stop || from == pos; from += MAX_LABEL_LEN) {
			unsigned piece = stop - from > MAX_LABEL_LEN ? MAX_LABEL_LEN : stop - from;
			__u64 a, b;

			label_sums((const unsigned char *)text + from, piece, key, &a, &b);
			state = chain_label(state, a, b);
			if (from + piece >= stop)
				break;
		}
		starts[count] = pos;
		out[count++] = state ^ key->k1;
		pos = end + 1;
	}
	return count;
}

/* Keep the first of each run of equal hashes in a sorted array (and its value); returns the
 * new length. */
size_t ccxdp_unique(__u64 *h, __u64 *v, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (o > 0 && h[i] == h[o - 1])
			continue;
		h[o] = h[i];
		v[o++] = v[i];
	}
	return o;
}

/* For each hash of the sorted, unique array nh: its position in the sorted, unique array
 * oh, or UINT64_MAX when oh lacks it. */
void ccxdp_join(const __u64 *oh, size_t on, const __u64 *nh, size_t nn, __u64 *out)
{
	size_t i = 0;

	for (size_t j = 0; j < nn; j++) {
		while (i < on && oh[i] < nh[j])
			i++;
		out[j] = i < on && oh[i] == nh[j] ? i : UINT64_MAX;
	}
}

/* Like ccxdp_unique, but equal hashes must carry equal values: returns the new length, or
 * -(i + 1) when the hash at i repeats with another value. */
long ccxdp_unique_agreeing(__u64 *h, __u64 *v, size_t n)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		if (o > 0 && h[i] == h[o - 1]) {
			if (v[i] != v[o - 1])
				return -(long)(i + 1);
			continue;
		}
		h[o] = h[i];
		v[o++] = v[i];
	}
	return (long)o;
}

/* out[i] = src[idx[i]]: values picked by position; -1 when a position is beyond src. */
int ccxdp_gather(const __u64 *src, size_t sn, const __u64 *idx, size_t n, __u64 *out)
{
	for (size_t i = 0; i < n; i++) {
		if (idx[i] >= sn)
			return -1;
		out[i] = src[idx[i]];
	}
	return 0;
}

/* Sort hashes, carrying each one's position in the input along (out_pos). */
int ccxdp_sort_positions(__u64 *h, __u64 *out_pos, size_t n)
{
	for (size_t i = 0; i < n; i++)
		out_pos[i] = i;
	return ccxdp_sort_pairs(h, out_pos, n);
}

/* Split the result of ccxdp_join: for each j, at[j] == UINT64_MAX puts first[j] in fresh,
 * otherwise at[j] goes to found and keys[j] to found_keys. counts[0..1]: how many fresh and
 * found. */
void ccxdp_split_join(const __u64 *at, const __u64 *first, const __u64 *keys, size_t n,
		      __u64 *fresh, __u64 *found, __u64 *found_keys, size_t *counts)
{
	size_t f = 0, m = 0;

	for (size_t j = 0; j < n; j++) {
		if (at[j] == UINT64_MAX) {
			fresh[f++] = first[j];
		} else {
			found[m] = at[j];
			found_keys[m++] = keys[j];
		}
	}
	counts[0] = f;
	counts[1] = m;
}
