// SPDX-License-Identifier: GPL-2.0
/*
 * ccxdp: judge DNS queries at the NIC against a list of C&C names.
 *
 * Ethernet -> VLAN tags -> IPv4/IPv6 -> UDP to a DNS port -> DNS header -> QNAME, then the
 * hash of every suffix of the name is looked up and the most specific entry decides. Anything
 * that is not a judged query passes unchanged; one exit counts exactly one outcome per frame.
 */
#include <uapi/linux/bpf.h>

#include "ccxdp_shared.h"
#include "maps.h"
#include "parse.h"
#include "dns.h"
#include "answer.h"

/*
 * The keys the name loops look maps up with start an 8-byte stack slot each. The verifier
 * tracks the stack in 8-byte slots, and a 4-byte key that clang placed in the upper half of
 * one left the suffix loop's states differing in that slot, so fewer of them were pruned:
 * once the name table's key moved from fp-8 to fp-4 (after an unrelated change to the answer
 * code), the verifier processed 217,000 instructions instead of 174,000 (bcc 0.26, clang 14,
 * kernel 6.18).
 */
#define LOOP_KEY __attribute__((aligned(8)))

/* The entry of one suffix hash in a buffer of the name table (maps.h), or NULL. */
static __always_inline struct ccxdp_entry *lookup_name(__u64 suffix_hash, __u32 buffer)
{
	__u32 r LOOP_KEY = ((buffer & 1) << CCXDP_NAME_INDEX_LOG2) |
			   (__u32)(suffix_hash >> (64 - CCXDP_NAME_INDEX_LOG2));
	struct ccxdp_name_range *range = ccxdp_nrange_v1.lookup(&r);
	__u32 base = (buffer & 1) * CCXDP_MAX_NAMES, i, end;

	if (!range)
		return NULL;
	i = range->start;
	end = range->end;
	for (int n = 0; n < CCXDP_NAME_RUN_MAX; n++) {
		__u32 at LOOP_KEY = base + i;
		struct ccxdp_name_slot *slot;

		if (i >= end)
			break;
		slot = ccxdp_nslot_v1.lookup(&at);
		if (!slot || slot->hash > suffix_hash)
			break; /* sorted: it is not there */
		if (slot->hash == suffix_hash)
			return &slot->entry;
		i++;
	}
	return NULL;
}

static __always_inline int bloom_may_hold(__u64 suffix_hash)
{
	__u32 index LOOP_KEY = suffix_hash >> (64 - CCXDP_BLOOM_WORDS_LOG2);
	__u64 bits = (1ULL << (suffix_hash & 63)) | (1ULL << ((suffix_hash >> 6) & 63));
	__u64 *word = ccxdp_bloom_v2.lookup(&index);

	return word && (*word & bits) == bits;
}

static __always_inline void count_stat(__u32 index)
{
	__u64 *counter = ccxdp_stats_v3.lookup(&index);

	if (counter)
		*counter += 1; /* per-CPU: softirq, no atomics needed */
}

static __always_inline int record_verdict(int outcome, int malformed, int action)
{
	count_stat(outcome);
	if (outcome == CCXDP_OUT_MALFORMED)
		count_stat(CCXDP_STAT_MALFORMED_BASE + malformed);
	return action;
}

/* One entry per (source, category) is shared by all CPUs, so hits are added atomically. The
 * epoch is read once: the hit goes to one buffer, the one its value names (maps.h). */
static __always_inline void count_source(struct ccxdp_source_key *key)
{
	/* The coarse clock (to a tick) costs a few ns where the fine one reads the TSC (20-30 ns in
	 * a VM); a hit's time only has to place it in a day. CLOCK_MONOTONIC stops while the
	 * machine is suspended, which a resolver is not. Kernel 5.11 or later. */
	__u64 now = bpf_ktime_get_coarse_ns();
	__u32 zero = 0;
	__u64 *epoch = ccxdp_sepoch_v1.lookup(&zero);
	struct ccxdp_source_hits *hits;

	if (!epoch) {
		count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_SOURCE_LOST);
		return;
	}
	key->buffer = *epoch & 1;
	hits = ccxdp_srcs_v2.lookup(key);
	if (!hits) {
		struct ccxdp_source_hits first = { .hits = 1, .first_seen_ns = now,
						   .last_seen_ns = now };

		if (ccxdp_srcs_v2.insert(key, &first) == 0)
			return;
		/* Another CPU created it between our lookup and insert: add to theirs. Or the map
		 * is full (no LRU eviction): the hit is lost, and counted as lost. */
		hits = ccxdp_srcs_v2.lookup(key);
		if (!hits) {
			count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_SOURCE_LOST);
			return;
		}
	}
	__sync_fetch_and_add(&hits->hits, 1);
	hits->last_seen_ns = now;
}

int ccxdp_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct cursor c = { .pos = data, .end = data_end };
	struct ccxdp_source_key source = {};
	int outcome = CCXDP_OUT_NOT_DNS, malformed = 0, action = XDP_PASS, verdict;
	struct ccxdp_scratch *s;
	struct ccxdp_hash_key *key;
	struct ccxdp_config *cfg;
	struct ccxdp_lpm_key exempt_key;
	__u32 *active, *config_live, gate;
	__u8 *gated;
	void *l3, *l4;
	struct ethhdr *eth;
	struct iphdr *ip;
	struct ipv6hdr *ip6;
	struct udphdr *udp;
	struct dnshdr *dns;
	void *payload_end, *ip_end;
	__u32 zero = 0, port, live;
	__u16 udp_len, flags;
	__u8 *judge_port;
	__be16 proto;
	int nexthdr;

	if (!(eth = parse_ethhdr(&c)) || !(proto = parse_vlans(&c, eth->h_proto)))
		goto out;
	if (proto_is_vlan(proto)) {
		outcome = CCXDP_OUT_UNPARSED;
		goto out;
	}

	l3 = c.pos;
	if (proto == bpf_htons(ETH_P_IP)) {
		if (!(ip = parse_iphdr(&c)))
			goto out;
		if (ip->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET)) {
			outcome = CCXDP_OUT_FRAGMENT;
			goto out;
		}
		if (ip->protocol != IPPROTO_UDP)
			goto out;
		ip_end = (void *)ip + bpf_ntohs(ip->tot_len);
		/* IPv4 sources are kept IPv4-mapped (::ffff:a.b.c.d): one key form for both. */
		source.addr[10] = 0xff;
		source.addr[11] = 0xff;
		__builtin_memcpy(&source.addr[12], &ip->saddr, 4);
		gate = (source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE] << 8) |
		       source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE + 1];
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		if (!(ip6 = parse_ipv6hdr(&c)))
			goto out;
		nexthdr = skip_ipv6_ext(&c, ip6->nexthdr);
		if (nexthdr == IPPROTO_FRAGMENT) {
			outcome = CCXDP_OUT_FRAGMENT;
			goto out;
		}
		if (ipv6_ext_walked(nexthdr) || nexthdr == IPPROTO_AH) {
			outcome = CCXDP_OUT_UNPARSED;
			goto out;
		}
		if (nexthdr != IPPROTO_UDP)
			goto out;
		ip_end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(source.addr, &ip6->saddr, 16);
		gate = (source.addr[CCXDP_EXEMPT_GATE_V6_BYTE] << 8) |
		       source.addr[CCXDP_EXEMPT_GATE_V6_BYTE + 1];
		/* An IPv4-mapped source is the same key as the IPv4 one: the trie's IPv4 prefixes
		 * cover it, so it takes the IPv4 index. */
		if (ip6->saddr.in6_u.u6_addr32[0] == 0 && ip6->saddr.in6_u.u6_addr32[1] == 0 &&
		    ip6->saddr.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
			gate = (source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE] << 8) |
			       source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE + 1];
	} else {
		goto out;
	}

	l4 = c.pos;
	if (!(udp = parse_udphdr(&c)))
		goto out;
	port = bpf_ntohs(udp->dest);
	judge_port = ccxdp_ports_v1.lookup(&port);
	if (!judge_port || !*judge_port)
		goto out;

	/* A query to a DNS port: from here on, what does not parse is malformed. */
	outcome = CCXDP_OUT_MALFORMED;
	malformed = CCXDP_MAL_HEADER;
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) + sizeof(*dns))
		goto out;
	malformed = CCXDP_MAL_TRUNCATED;
	if (!(dns = parse_dnshdr(&c)))
		goto out;
	flags = bpf_ntohs(dns->flags);
	if ((flags & DNS_FLAG_QR) || (flags & DNS_OPCODE_MASK) != DNS_OPCODE_QUERY ||
	    dns->qdcount != bpf_htons(1)) {
		outcome = CCXDP_OUT_NOT_QUERY;
		goto out;
	}
	/* The UDP length, not the frame, ends the payload: frames may carry padding. It must lie
	 * within the IP packet, as the kernel's own UDP receive path requires. */
	payload_end = (void *)udp + udp_len;
	if (payload_end > ip_end) {
		malformed = CCXDP_MAL_HEADER;
		goto out;
	}
	if (payload_end > data_end)
		goto out;

	s = ccxdp_scratch.lookup(&zero);
	if (!s || c.pos - data > CCXDP_MAX_FRAME_OFF)
		goto out;
	s->qoff = c.pos - data;
	s->avail = payload_end - c.pos;
	s->l3_off = l3 - data;
	s->l4_off = l4 - data;
	s->ipv6 = proto == bpf_htons(ETH_P_IPV6);
	s->source = source;
	/* Opted-out lines are neither judged nor counted per source: no name walk for them. */
	gated = ccxdp_exgate_v1.lookup(&gate);
	if (gated && *gated) {
		exempt_key.prefixlen = 128;
		__builtin_memcpy(exempt_key.addr, s->source.addr, 16);
		if (ccxdp_exempt_v1.lookup(&exempt_key)) {
			outcome = CCXDP_OUT_EXEMPT;
			goto out;
		}
	}

	/* The name loops reload packet pointers from ctx (dns.h says why); this barrier keeps
	 * the compiler from reusing the ones above instead. */
	asm volatile("" ::: "memory");

	malformed = dns_find_labels(ctx, s);
	if (malformed != CCXDP_CONTINUE)
		goto out;
	/* QTYPE and QCLASS must follow the name. */
	malformed = CCXDP_MAL_TRUNCATED;
	if (s->name_len + DNS_QUESTION_FIXED_LEN > s->avail)
		goto out;

	key = ccxdp_hkey_v2.lookup(&zero);
	active = ccxdp_nact_v1.lookup(&zero);
	if (!key || !active)
		goto out;
	s->buffer = *active; /* once per packet: one list from the first suffix to the last */
	dns_match_suffixes(ctx, s, key);
	if (!s->matched) {
		outcome = CCXDP_OUT_PASSED;
		goto out;
	}
	/* Settings only matter once an entry matched: a hash-map lookup spared on every miss. */
	config_live = ccxdp_cact_v1.lookup(&zero);
	if (!config_live)
		goto out;
	live = *config_live & 1; /* read once: one whole struct, old or new */
	cfg = ccxdp_config_v3.lookup(&live);
	if (!cfg)
		goto out;

	verdict = s->match.action;
	if (verdict == CCXDP_ACTION_DEFAULT)
		verdict = cfg->default_action;
	if (verdict <= CCXDP_ACTION_DEFAULT || verdict >= CCXDP_ACTION_MAX)
		verdict = CCXDP_ACTION_DROP;
	count_stat(CCXDP_STAT_ACTION_BASE + verdict);
	if (verdict == CCXDP_ACTION_ALLOW) {
		outcome = CCXDP_OUT_ALLOWED;
		goto out;
	}
	s->source.category = s->match.category;
	count_source(&s->source);
	if (verdict == CCXDP_ACTION_MONITOR) {
		outcome = CCXDP_OUT_MONITORED;
		goto out;
	}
	outcome = CCXDP_OUT_BLOCKED;
	action = XDP_DROP;
	if (verdict != CCXDP_ACTION_DROP) {
		action = build_answer(ctx, s, cfg, verdict);
		if (action != XDP_TX)
			count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_ANSWER_FAILED);
	}
out:
	return record_verdict(outcome, malformed, action);
}
