// SPDX-License-Identifier: GPL-2.0
/*
 * Bulk work of the control plane on a million names, in C: hashing (with the XDP program's
 * own arithmetic, bpf/name_hash.h), sorting, merging and diffing sorted hash arrays, and
 * building the name table's ranges. Python calls it through ctypes (ccxdp/datapath/bulk.py)
 * and keeps a pure-Python version of each function that the tests hold equal to this one.
 *
 * Arrays are caller-owned; nothing here keeps state or allocates beyond a sort's scratch.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint32_t __u32;
typedef uint64_t __u64;

#include "name_hash.h"

#define NH_KEY_WORDS 20
#define MAX_NAME_LEN 255
#define MAX_LABEL_LEN 63

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
 * The name table's ranges (bpf/maps.h): for each r < 2^bits, ranges[2r] and ranges[2r + 1]
 * are the first and one-past-last positions of the sorted hashes whose top bits are r.
 * Returns the longest range.
 */
size_t ccxdp_build_ranges(const __u64 *h, size_t n, unsigned bits, __u32 *ranges)
{
	size_t i = 0, longest = 0, nranges = (size_t)1 << bits;

	for (size_t r = 0; r < nranges; r++) {
		size_t start = i;

		while (i < n && (h[i] >> (64 - bits)) == r)
			i++;
		ranges[2 * r] = (__u32)start;
		ranges[2 * r + 1] = (__u32)i;
		if (i - start > longest)
			longest = i - start;
	}
	return longest;
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

/* Set the bloom filter bits of n hashes in words (bpf/maps.h: 2^log2 words, the word is the
 * hash's top bits, the bits are hash & 63 and (hash >> 6) & 63). */
void ccxdp_bloom_set(const __u64 *h, size_t n, unsigned log2, __u64 *words)
{
	for (size_t i = 0; i < n; i++)
		words[h[i] >> (64 - log2)] |= (1ULL << (h[i] & 63)) | (1ULL << ((h[i] >> 6) & 63));
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
