// SPDX-License-Identifier: GPL-2.0
/*
 * ccxdp: judge DNS queries at the NIC against a list of C&C names.
 *
 * Ethernet -> VLAN tags -> IPv4/IPv6 -> UDP or TCP to a DNS port -> DNS header -> QNAME, then
 * the hash of every suffix of the name is looked up and the most specific entry decides.
 * Anything that is not a judged query passes unchanged, but for what could hide one from the
 * filter (fragments, headers deeper than parsed: the `fragments` and `unparsed` settings); one
 * exit counts exactly one outcome per frame.
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

/*
 * The slot of a bucket holding the hash whose low 48 bits are lo and hi, among the slots
 * whose bits are set in mask; CCXDP_NAME_BUCKET_SLOTS if none. Every slot's tag_lo is
 * compared, used or not (unused ones are zero): seven loads from the one line and a branch
 * each, cheaper than reading the slot count first, and the mask, tested only once the tag
 * matched, keeps an unused or foreign slot from counting. The mask is never compared with the
 * slot number, so the verifier's states do not split on its value.
 */
static __always_inline __u32 bucket_find(const struct ccxdp_name_bucket *bk, __u32 lo, __u32 hi,
					 __u32 mask)
{
#pragma unroll
	for (__u32 i = 0; i < CCXDP_NAME_BUCKET_SLOTS; i++)
		if (bk->tag_lo[i] == lo && bk->tag_hi[i] == hi && ((mask >> i) & 1))
			return i;
	return CCXDP_NAME_BUCKET_SLOTS;
}

/*
 * The entry of one suffix hash in a buffer of the name table (maps.h), packed as
 * action | flags << 4 | category << 8, or -1 when the buffer does not hold it. The filter
 * word first; then one bucket, and its second only when the first says one of its names
 * went there.
 */
static __always_inline __s64 lookup_name(__u64 suffix_hash, __u32 buffer)
{
	__u32 base = (buffer & 1) * CCXDP_NAME_BUCKETS;
	__u32 first = name_bucket_first(suffix_hash, CCXDP_NAME_BUCKETS);
	__u32 index LOOP_KEY = first; /* one key slot for the three lookups (see LOOP_KEY) */
	__u32 lo = (__u32)suffix_hash, hi = (__u16)(suffix_hash >> 32), meta, at;
	__u64 bits = CCXDP_NAME_FILTER_BITS(suffix_hash);
	struct ccxdp_name_bucket *bk;
	__u64 *word = ccxdp_nfilt_v1.lookup(&index);

	if (!word || (*word & bits) != bits)
		return -1;
	index = base + first;
	bk = ccxdp_nbkt_v1.lookup(&index);
	if (!bk)
		return -1;
	meta = bk->meta;
	at = bucket_find(bk, lo, hi, (1U << CCXDP_NB_PRIMARY(meta)) - 1);
	if (at >= CCXDP_NAME_BUCKET_SLOTS) {
		if (!(meta & CCXDP_NB_SPILLED))
			return -1;
		index = base + name_bucket_second(suffix_hash, first, CCXDP_NAME_BUCKETS);
		bk = ccxdp_nbkt_v1.lookup(&index);
		if (!bk)
			return -1;
		meta = bk->meta;
		at = bucket_find(bk, lo, hi,
				 ((1U << CCXDP_NB_USED(meta)) - 1) &
					 ~((1U << CCXDP_NB_PRIMARY(meta)) - 1));
		if (at >= CCXDP_NAME_BUCKET_SLOTS)
			return -1;
	}
	return bk->what[at] | (__s64)bk->category[at] << 8;
}

static __always_inline void count_stat(__u32 index)
{
	__u64 *counter = ccxdp_stats_v5.lookup(&index);

	if (counter)
		*counter += 1; /* per-CPU: softirq, no atomics needed */
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
	hits = ccxdp_srcs_v3.lookup(key);
	if (!hits) {
		struct ccxdp_source_hits first = { .hits = 1, .first_seen_ns = now,
						   .last_seen_ns = now };

		if (ccxdp_srcs_v3.insert(key, &first) == 0)
			return;
		/* Another CPU created it between our lookup and insert: add to theirs. Or the map
		 * is full (no LRU eviction): the hit is lost, and counted as lost. */
		hits = ccxdp_srcs_v3.lookup(key);
		if (!hits) {
			count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_SOURCE_LOST);
			return;
		}
	}
	__sync_fetch_and_add(&hits->hits, 1);
	hits->last_seen_ns = now;
}

/* The per-source key of a hit: IPv4 per address, IPv6 per prefix of prefix_v6 bits (a
 * subscriber's delegation), so that the rotating privacy addresses of one line are one entry
 * and a flood from one delegated prefix cannot make more than one. */
static __always_inline void key_by_prefix(struct ccxdp_source_key *key, __u32 prefix_v6)
{
	__u64 hi, lo, hi_mask, lo_mask;
	__u32 mapped[3];

	__builtin_memcpy(mapped, key->addr, sizeof(mapped));
	if (mapped[0] == 0 && mapped[1] == 0 && mapped[2] == bpf_htonl(0xffff)) {
		key->prefix_len = 128;
		return;
	}
	if (prefix_v6 == 0 || prefix_v6 > 128)
		prefix_v6 = 128; /* never written: per address, as before prefixes */
	key->prefix_len = prefix_v6;
	__builtin_memcpy(&hi, key->addr, 8);
	__builtin_memcpy(&lo, key->addr + 8, 8);
	hi_mask = prefix_v6 >= 64 ? ~0ULL : ~0ULL << (64 - prefix_v6);
	lo_mask = prefix_v6 >= 128 ? ~0ULL : prefix_v6 <= 64 ? 0 : ~0ULL << (128 - prefix_v6);
	hi &= __builtin_bswap64(hi_mask); /* the address is big-endian, BPF on x86 little */
	lo &= __builtin_bswap64(lo_mask);
	__builtin_memcpy(key->addr, &hi, 8);
	__builtin_memcpy(key->addr + 8, &lo, 8);
}

/*
 * Keys of the maps the entry's steps look up. Helpers take keys by address, so keys live on
 * the stack; declared in the entry, each keeps its own place there for the whole run. A key
 * declared inside a step gets a slot that clang may share with locals of other steps, and the
 * verifier then tells states apart by what such a slot held before: keys kept in the steps
 * made it process up to 333,000 instructions instead of 178,000.
 */
struct map_keys {
	__u32 zero;		     /* the single-entry maps */
	__u32 port;		     /* ccxdp_ports */
	__u32 gate;		     /* ccxdp_exgate */
	__u32 live;		     /* ccxdp_config */
	struct ccxdp_lpm_key exempt; /* ccxdp_exempt */
	struct ccxdp_lpm_key plan;   /* ccxdp_plan */
};

/* What the entry's steps learn about one frame, handed from each step to the next. */
struct frame {
	struct map_keys *key;		/* on the entry's stack */
	struct cursor c;		/* the parse position and the frame's end */
	void *data;			/* the frame's start */
	void *l3;			/* the IP header */
	void *l4;			/* the UDP or TCP header */
	void *ip_end;			/* the IP packet's end, by its own length field */
	void *payload_end;		/* the DNS message's end (UDP) or the question's limit (TCP) */
	__u8 ipv6;			/* 1: IPv6, 0: IPv4 */
	__u8 tcp;			/* 1: TCP, 0: UDP; after save_offsets(), read s->tcp: a
					 * map value's byte does not split the name loops' states */
	struct ccxdp_source_key source; /* IPv4 sources IPv4-mapped (::ffff:a.b.c.d) */
	struct ccxdp_scratch *s;	/* per-CPU working memory, once the frame is a query */
	struct ccxdp_config *cfg;	/* the live settings, once an entry matched */
	int action;			/* enum ccxdp_action that decides, default resolved */
	int outcome;			/* enum ccxdp_outcome */
	int malformed;			/* enum ccxdp_malformed, when outcome is MALFORMED */
};

/* The one exit: count the frame's outcome (and why, when malformed), return its verdict. */
static __always_inline int record_verdict(const struct frame *f, int verdict)
{
	count_stat(f->outcome);
	if (f->outcome == CCXDP_OUT_MALFORMED)
		count_stat(CCXDP_STAT_MALFORMED_BASE + f->malformed);
	return verdict;
}

/*
 * A frame that cannot be judged and may hide a query (a first fragment to a DNS port, headers
 * deeper than parsed): passed if the live settings say so (pass_bit), else dropped and counted
 * as the event. A DNS query is small enough never to need fragments or such headers, so what
 * carries one to a DNS port is all but certainly a way around the filter.
 */
static __always_inline int unjudged_verdict(struct frame *f, __u8 pass_bit, __u32 event)
{
	__u32 *config_live = ccxdp_cact_v1.lookup(&f->key->zero);
	struct ccxdp_config *cfg;

	if (config_live) {
		f->key->live = *config_live & 1;
		cfg = ccxdp_config_v5.lookup(&f->key->live);
		if (cfg && (cfg->pass_unjudged & pass_bit))
			return XDP_PASS;
	}
	count_stat(CCXDP_STAT_EVENT_BASE + event);
	return XDP_DROP;
}

/* A first fragment whose transport header holds port (first_fragment_port()): judged by the
 * `fragments` setting when the port is a DNS port or cannot be read. */
static __always_inline int first_fragment_verdict(struct frame *f, int port)
{
	__u8 *judge_port;

	if (port == -1)
		return XDP_PASS;
	if (port >= 0) {
		f->key->port = port;
		judge_port = ccxdp_ports_v1.lookup(&f->key->port);
		if (!judge_port || !*judge_port)
			return XDP_PASS;
	}
	return unjudged_verdict(f, CCXDP_PASS_FRAGMENTS, CCXDP_EV_FRAGMENT_DROPPED);
}

static __always_inline int parse_ipv4_source(struct frame *f)
{
	struct iphdr *ip;

	if (!(ip = parse_iphdr(&f->c)))
		return XDP_PASS;
	if (ip->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET)) {
		f->outcome = CCXDP_OUT_FRAGMENT;
		/* A later fragment is no datagram without its first, which is judged. */
		if (ip->frag_off & bpf_htons(IPV4_OFFSET))
			return XDP_PASS;
		return first_fragment_verdict(f, first_fragment_port(&f->c, ip->protocol));
	}
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return XDP_PASS;
	f->tcp = ip->protocol == IPPROTO_TCP;
	f->ip_end = (void *)ip + bpf_ntohs(ip->tot_len);
	/* IPv4 sources are kept IPv4-mapped (::ffff:a.b.c.d): one key form for both. */
	f->source.addr[10] = 0xff;
	f->source.addr[11] = 0xff;
	__builtin_memcpy(&f->source.addr[12], &ip->saddr, 4);
	f->key->gate = (f->source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE] << 8) |
		       f->source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE + 1];
	return CCXDP_CONTINUE;
}

/* An IPv6 fragment, the cursor on its fragment header: a later fragment passes, a first one
 * is judged by the `fragments` setting when it goes to a DNS port, or when what follows its
 * fragment header hides the port. */
static __always_inline int ipv6_fragment_verdict(struct frame *f)
{
	struct ipv6_frag_hdr *frag = f->c.pos;

	if ((void *)(frag + 1) > f->c.end)
		return first_fragment_verdict(f, -2);
	if (frag->frag_off & bpf_htons(IPV6_FRAG_OFFSET))
		return XDP_PASS;
	f->c.pos = frag + 1;
	if (ipv6_ext_walked(frag->nexthdr) || frag->nexthdr == IPPROTO_AH)
		return first_fragment_verdict(f, -2);
	return first_fragment_verdict(f, first_fragment_port(&f->c, frag->nexthdr));
}

static __always_inline int parse_ipv6_source(struct frame *f)
{
	struct ipv6hdr *ip6;
	int nexthdr;

	if (!(ip6 = parse_ipv6hdr(&f->c)))
		return XDP_PASS;
	nexthdr = skip_ipv6_ext(&f->c, ip6->nexthdr);
	if (nexthdr == IPPROTO_FRAGMENT) {
		f->outcome = CCXDP_OUT_FRAGMENT;
		return ipv6_fragment_verdict(f);
	}
	if (ipv6_ext_walked(nexthdr) || nexthdr == IPPROTO_AH) {
		f->outcome = CCXDP_OUT_UNPARSED;
		return unjudged_verdict(f, CCXDP_PASS_UNPARSED, CCXDP_EV_UNPARSED_DROPPED);
	}
	if (nexthdr != IPPROTO_UDP && nexthdr != IPPROTO_TCP)
		return XDP_PASS;
	f->tcp = nexthdr == IPPROTO_TCP;
	f->ip_end = (void *)(ip6 + 1) + bpf_ntohs(ip6->payload_len);
	f->ipv6 = 1;
	__builtin_memcpy(f->source.addr, &ip6->saddr, 16);
	f->key->gate = (f->source.addr[CCXDP_EXEMPT_GATE_V6_BYTE] << 8) |
		       f->source.addr[CCXDP_EXEMPT_GATE_V6_BYTE + 1];
	/* An IPv4-mapped source is the same key as the IPv4 one: the trie's IPv4 prefixes
	 * cover it, so it takes the IPv4 index. */
	if (ip6->saddr.in6_u.u6_addr32[0] == 0 && ip6->saddr.in6_u.u6_addr32[1] == 0 &&
	    ip6->saddr.in6_u.u6_addr32[2] == bpf_htonl(0xffff))
		f->key->gate = (f->source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE] << 8) |
			       f->source.addr[12 + CCXDP_EXEMPT_GATE_V4_BYTE + 1];
	return CCXDP_CONTINUE;
}

/* Ethernet, up to two VLAN tags, then IPv4 or IPv6 carrying UDP or TCP: where the IP packet
 * ends, its source, and the source's exempt gate index. */
static __always_inline int parse_l3_source(struct frame *f)
{
	struct ethhdr *eth;
	__be16 proto;

	if (!(eth = parse_ethhdr(&f->c)) || !(proto = parse_vlans(&f->c, eth->h_proto)))
		return XDP_PASS;
	if (proto_is_vlan(proto)) {
		f->outcome = CCXDP_OUT_UNPARSED;
		return unjudged_verdict(f, CCXDP_PASS_UNPARSED, CCXDP_EV_UNPARSED_DROPPED);
	}
	f->l3 = f->c.pos;
	if (proto == bpf_htons(ETH_P_IP))
		return parse_ipv4_source(f);
	if (proto == bpf_htons(ETH_P_IPV6))
		return parse_ipv6_source(f);
	return XDP_PASS;
}

/*
 * TCP to a judged port whose segment starts with a DNS query (RFC 7766 8: the 2-byte length,
 * then the message; or the message alone, its length sent before): leaves the cursor on the QNAME, and in f the end of what may hold the
 * question, the message's or the segment's, whichever comes first (the message may go on in
 * later segments). Only the segment at hand is seen: a segment that starts no query passes as
 * CCXDP_OUT_TCP_OTHER, one whose question runs past its end as malformed, and queries
 * pipelined after the first in one segment pass unjudged.
 */
static __always_inline int parse_tcp_query(struct frame *f)
{
	struct tcphdr *tcp;
	struct dnshdr *dns;
	long len, in_segment;
	__be16 *msg_len;
	void *payload_end;
	__u8 *judge_port;
	__u8 flags;

	f->l4 = f->c.pos;
	if (!(tcp = parse_tcphdr(&f->c)))
		return XDP_PASS;
	f->key->port = bpf_ntohs(tcp->dest);
	judge_port = ccxdp_ports_v1.lookup(&f->key->port);
	if (!judge_port || !*judge_port)
		return XDP_PASS;
	f->outcome = CCXDP_OUT_TCP_OTHER;
	/* A query's segment acknowledges the handshake. Data on a SYN (TCP Fast Open) has no
	 * connection to close yet; a RST carries nothing to the resolver. */
	flags = ((__u8 *)tcp)[TCP_FLAGS_BYTE];
	if ((flags & (TCP_FLAG_SYN | TCP_FLAG_RST)) || !(flags & TCP_FLAG_ACK))
		return XDP_PASS;
	msg_len = f->c.pos;
	if ((void *)(msg_len + 1) > f->c.end)
		return XDP_PASS;
	/* The message after its length, or alone: a client that writes the length on its own
	 * sends the message in the next segment (the length then reads as the whole segment). */
	len = bpf_ntohs(*msg_len);
	dns = (void *)(msg_len + 1);
	if ((void *)(dns + 1) > f->c.end || !dns_is_judged_query(dns) || len < sizeof(*dns)) {
		dns = (void *)msg_len;
		if ((void *)(dns + 1) > f->c.end || !dns_is_judged_query(dns))
			return XDP_PASS;
		len = f->ip_end - (void *)dns;
	}
	f->c.pos = dns + 1;
	/* The smaller of the two as a length, not as a choice between two packet pointers:
	 * that choice kept two verifier states apart through the name loops (390,000
	 * instructions processed instead of 230,000). */
	in_segment = f->ip_end - (void *)dns;
	if (in_segment < 0)
		return XDP_PASS; /* an IP length that ends before the DNS header */
	if (len > in_segment)
		len = in_segment;
	payload_end = (void *)dns + (len & 0xffff);
	if (payload_end < f->c.pos || payload_end > f->c.end)
		return XDP_PASS;
	/* A query's start: from here on, what does not parse is malformed. */
	f->outcome = CCXDP_OUT_MALFORMED;
	f->malformed = CCXDP_MAL_TRUNCATED;
	f->payload_end = payload_end;
	return CCXDP_CONTINUE;
}

/* UDP or TCP to a judged port carrying a DNS query: leaves the cursor on the QNAME and the DNS
 * message's end in f. */
static __always_inline int parse_dns_query(struct frame *f)
{
	struct udphdr *udp;
	struct dnshdr *dns;
	void *payload_end;
	__u8 *judge_port;
	__u16 udp_len;

	if (f->tcp)
		return parse_tcp_query(f);
	f->l4 = f->c.pos;
	if (!(udp = parse_udphdr(&f->c)))
		return XDP_PASS;
	f->key->port = bpf_ntohs(udp->dest);
	judge_port = ccxdp_ports_v1.lookup(&f->key->port);
	if (!judge_port || !*judge_port)
		return XDP_PASS;

	/* A query to a DNS port: from here on, what does not parse is malformed. */
	f->outcome = CCXDP_OUT_MALFORMED;
	f->malformed = CCXDP_MAL_HEADER;
	udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(*udp) + sizeof(*dns))
		return XDP_PASS;
	f->malformed = CCXDP_MAL_TRUNCATED;
	if (!(dns = parse_dnshdr(&f->c)))
		return XDP_PASS;
	if (!dns_is_judged_query(dns)) {
		f->outcome = CCXDP_OUT_NOT_QUERY;
		return XDP_PASS;
	}
	/* The UDP length, not the frame, ends the payload: frames may carry padding. It must lie
	 * within the IP packet, as the kernel's own UDP receive path requires. */
	payload_end = (void *)udp + udp_len;
	if (payload_end > f->ip_end) {
		f->malformed = CCXDP_MAL_HEADER;
		return XDP_PASS;
	}
	if (payload_end > f->c.end)
		return XDP_PASS;
	f->payload_end = payload_end;
	return CCXDP_CONTINUE;
}

/* Note where the query's parts lie, as offsets in the per-CPU scratch value: the name loops
 * and the answer work from those, not from packet pointers (dns.h says why). */
static __always_inline int save_offsets(struct frame *f)
{
	struct ccxdp_scratch *s;

	s = ccxdp_scratch.lookup(&f->key->zero);
	if (!s || f->c.pos - f->data > CCXDP_MAX_FRAME_OFF)
		return XDP_PASS;
	s->qoff = f->c.pos - f->data;
	s->avail = f->payload_end - f->c.pos;
	s->l3_off = f->l3 - f->data;
	s->l4_off = f->l4 - f->data;
	s->ipv6 = f->ipv6;
	s->tcp = f->tcp;
	s->source = f->source;
	f->s = s;
	return CCXDP_CONTINUE;
}

/* Opted-out lines are neither judged nor counted per source: no name walk for them. */
static __always_inline int pass_if_exempt(struct frame *f)
{
	struct ccxdp_lpm_key *exempt = &f->key->exempt;
	__u8 *gated;

	gated = ccxdp_exgate_v1.lookup(&f->key->gate);
	if (gated && *gated) {
		exempt->prefixlen = 128;
		__builtin_memcpy(exempt->addr, f->s->source.addr, 16);
		if (ccxdp_exempt_v1.lookup(exempt)) {
			f->outcome = CCXDP_OUT_EXEMPT;
			return XDP_PASS;
		}
	}
	return CCXDP_CONTINUE;
}

/* The question: the QNAME's labels, then room for QTYPE and QCLASS after them. */
static __always_inline int parse_question(struct xdp_md *ctx, struct frame *f)
{
	struct ccxdp_scratch *s = f->s;

	/* The name loops reload packet pointers from ctx (dns.h says why); this barrier keeps
	 * the compiler from reusing the ones above instead. */
	asm volatile("" ::: "memory");

	f->malformed = dns_find_labels(ctx, s);
	if (f->malformed != CCXDP_CONTINUE)
		return XDP_PASS;
	/* QTYPE and QCLASS must follow the name. */
	f->malformed = CCXDP_MAL_TRUNCATED;
	if (s->name_len + DNS_QUESTION_FIXED_LEN > s->avail)
		return XDP_PASS;
	return CCXDP_CONTINUE;
}

/* Whether a hit may be counted per source: with no address plan, or from inside it. A
 * source outside the plan may be spoofed, and an entry for it could crowd out a real line
 * (maps.h, ccxdp_plan). */
static __always_inline int source_in_plan(struct frame *f)
{
	struct ccxdp_lpm_key *plan = &f->key->plan;
	__u8 *inside;

	plan->prefixlen = 128;
	__builtin_memcpy(plan->addr, f->s->source.addr, 16);
	inside = ccxdp_plan_v1.lookup(plan);
	return !inside || *inside;
}

/* Hash every suffix of the name and let the most specific entry decide: its action, with the
 * configured default resolved, and the live settings are left in f. */
static __always_inline int judge_name(struct xdp_md *ctx, struct frame *f)
{
	struct ccxdp_scratch *s = f->s;
	__u32 *active, *config_live;
	struct ccxdp_hash_key *key;
	int action;

	key = ccxdp_hkey_v2.lookup(&f->key->zero);
	active = ccxdp_nact_v2.lookup(&f->key->zero); /* CCXDP_NACT_LIVE */
	if (!key || !active)
		return XDP_PASS;
	s->buffer = *active; /* once per packet: one list from the first suffix to the last */
	dns_match_suffixes(ctx, s, key);
	if (!s->matched) {
		f->outcome = CCXDP_OUT_PASSED;
		return XDP_PASS;
	}
	/* Settings only matter once an entry matched: a hash-map lookup spared on every miss. */
	config_live = ccxdp_cact_v1.lookup(&f->key->zero);
	if (!config_live)
		return XDP_PASS;
	f->key->live = *config_live & 1; /* read once: one whole struct, old or new */
	f->cfg = ccxdp_config_v5.lookup(&f->key->live);
	if (!f->cfg)
		return XDP_PASS;

	action = s->match.action;
	if (action == CCXDP_ACTION_DEFAULT)
		action = f->cfg->default_action;
	if (action <= CCXDP_ACTION_DEFAULT || action >= CCXDP_ACTION_MAX)
		action = CCXDP_ACTION_DROP;
	f->action = action;
	return CCXDP_CONTINUE;
}

/* Do what the action says: pass an allowed query; count the source of any other (per source
 * inside the address plan, only globally outside it), then pass a monitored query and drop or
 * answer a blocked one, or close its connection over TCP. */
static __always_inline int act(struct xdp_md *ctx, struct frame *f)
{
	struct ccxdp_scratch *s = f->s;
	int verdict;

	/* tc sends the client to TCP, where the resolver answers it (RPZ's tcp-only): this is
	 * that retry, and its UDP query was counted. */
	if (s->tcp && f->action == CCXDP_ACTION_TC) {
		f->outcome = CCXDP_OUT_TCP_RETRY;
		return XDP_PASS;
	}
	count_stat(CCXDP_STAT_ACTION_BASE + f->action);
	if (f->action == CCXDP_ACTION_ALLOW) {
		f->outcome = CCXDP_OUT_ALLOWED;
		return XDP_PASS;
	}
	s->source.category = s->match.category;
	if (source_in_plan(f)) {
		key_by_prefix(&s->source, f->cfg->source_prefix_v6);
		count_source(&s->source);
	} else {
		count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_OUTSIDE_PLAN);
	}
	if (f->action == CCXDP_ACTION_MONITOR) {
		f->outcome = CCXDP_OUT_MONITORED;
		return XDP_PASS;
	}
	f->outcome = CCXDP_OUT_BLOCKED;
	/* Over TCP every blocking action closes the connection: a dropped segment would hold
	 * one of the resolver's few TCP slots until its idle timeout. */
	if (s->tcp) {
		verdict = close_tcp_query(ctx, s);
		count_stat(CCXDP_STAT_EVENT_BASE +
			   (verdict == XDP_PASS ? CCXDP_EV_TCP_CLOSED : CCXDP_EV_ANSWER_FAILED));
		return verdict;
	}
	if (f->action == CCXDP_ACTION_DROP)
		return XDP_DROP;
	if (!answerable(ctx, s)) {
		count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_NOT_UNICAST);
		return XDP_DROP;
	}
	verdict = build_answer(ctx, s, f->cfg, f->action);
	if (verdict != XDP_TX)
		count_stat(CCXDP_STAT_EVENT_BASE + CCXDP_EV_ANSWER_FAILED);
	return verdict;
}

/*
 * The steps a frame goes through, as in katran's balancer_ingress(). Each returns the frame's
 * verdict (an XDP action) once that is decided, or CCXDP_CONTINUE to go on to the next step
 * (katran's FURTHER_PROCESSING); whichever step decides, the frame is counted once, at the one
 * exit.
 */
int ccxdp_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	struct map_keys key;
	struct frame f = {
		.key = &key,
		.c = { .pos = data, .end = (void *)(long)ctx->data_end },
		.data = data,
		.outcome = CCXDP_OUT_NOT_DNS,
	};
	int verdict;

	key.zero = 0;
	verdict = parse_l3_source(&f);
	if (verdict >= 0)
		goto out;
	verdict = parse_dns_query(&f);
	if (verdict >= 0)
		goto out;
	verdict = save_offsets(&f);
	if (verdict >= 0)
		goto out;
	verdict = pass_if_exempt(&f);
	if (verdict >= 0)
		goto out;
	verdict = parse_question(ctx, &f);
	if (verdict >= 0)
		goto out;
	verdict = judge_name(ctx, &f);
	if (verdict >= 0)
		goto out;
	verdict = act(ctx, &f);
out:
	return record_verdict(&f, verdict);
}
