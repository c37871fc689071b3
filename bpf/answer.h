/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Answers built in place from the query and sent back with XDP_TX.
 *
 * The frame keeps its Ethernet header and VLAN tags (MACs swapped), its IP header (addresses
 * swapped, lengths and checksum redone) and UDP header (ports swapped). The DNS message keeps
 * the query's ID and question as the client sent them (DNS 0x20 case included); everything
 * after the question is replaced by the records the action calls for:
 *   sinkhole A/AAAA   the configured address, TTL answer_ttl
 *   nxdomain, nodata  an SOA in the authority section (RFC 2308): owner the QNAME itself,
 *                     MNAME and RNAME the root, TTL and MINIMUM negative_ttl; nothing in it
 *                     says why the name was blocked
 *   refused, tc       no records
 * and an OPT record (no options, the query's DO bit copied, RFC 3225 3) when the query carried
 * one; a query with EDNS version above 0 gets BADVERS (RFC 6891 6.1.3), a class other than IN
 * gets REFUSED. IPv4 options and IPv6 extension headers of the query are left out of the
 * answer: a reply need not reverse a route it came by (RFC 8200 4.4 forbids reversing a routing
 * header without authentication; Linux drops source-routed IPv4 by default), and no option a
 * query may carry asks for an echo. Queries sent to a broadcast or multicast address are
 * dropped instead of answered (callers check answerable()): an answer from such an address
 * would be no answer to a client.
 *
 * A blocked query over TCP is not answered: that needs a TCP stack. Its connection is closed
 * instead (close_tcp_query()).
 */
#ifndef CCXDP_ANSWER_H
#define CCXDP_ANSWER_H

#include "ccxdp_shared.h"
#include "dns_wire.h"
#include "maps.h"
#include "parse.h"

#define ANSWER_TTL_HOP 64

/* SOA timers other than MINIMUM: conventional values; they only matter to secondaries. */
#define SOA_SERIAL 1
#define SOA_REFRESH 3600
#define SOA_RETRY 600
#define SOA_EXPIRE 86400

/* Tests build a variant whose tail never grows, to drive grow_at_head() through
 * BPF_PROG_TEST_RUN (whose frames always have tailroom). */
#ifdef CCXDP_TEST_NO_TAIL_GROW
#define grow_tail(ctx, delta) ((delta) > 0 ? -1 : bpf_xdp_adjust_tail(ctx, delta))
#else
#define grow_tail(ctx, delta) bpf_xdp_adjust_tail(ctx, delta)
#endif

/*
 * The checksums read back, in words, bytes just stored through other types (header fields,
 * records). Under C's aliasing rules clang may move a __u32 load above a __u16 store to the
 * same bytes; these types tell it that the loads see every store before them.
 */
typedef __u16 __attribute__((may_alias)) alias_u16;
typedef __u32 __attribute__((may_alias)) alias_u32;
typedef __u64 __attribute__((may_alias)) alias_u64;

/* What the answer holds and where its parts go, worked out from the query before the frame
 * changes. */
struct answer_plan {
	__u32 dns_off;	   /* offset of the DNS header in the frame */
	__u32 qend;	   /* bytes of the DNS header and question */
	__u32 udp_len;	   /* the answer's UDP length */
	__u16 query_flags; /* the query's flags, host order */
	__u16 rcode;	   /* DNS_RCODE_* */
	__u16 tc;	   /* 1: TC set */
	__u16 rr_type;	   /* DNS_TYPE_A, DNS_TYPE_AAAA or DNS_TYPE_SOA; 0: no record */
	__u16 rr_len;	   /* bytes of that record */
	__u16 an;	   /* 1 when the record is an answer, 0 when it is authority */
	__u16 opt;	   /* 1 to append an OPT */
	__u16 badvers;	   /* 1: the OPT says BADVERS */
	__u16 dnssec_ok;   /* 1: the query's OPT had DO set, and so has the answer's */
};

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline void *frame_at(struct xdp_md *ctx, __u32 off, __u32 len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	void *p = data + (off & CCXDP_MAX_FRAME_OFF);

	if (p + len > data_end)
		return NULL;
	return p;
}

/* Whether the query's first additional record is an OPT (root owner, type 41): 0 if not, 1
 * for EDNS version 0, 2 for a later version; *dnssec_ok gets its DO bit. */
static __always_inline int query_opt(struct xdp_md *ctx, struct ccxdp_scratch *s, __u16 arcount,
				     __u16 *dnssec_ok)
{
	__u32 off = s->qoff + s->name_len + DNS_QUESTION_FIXED_LEN;
	__u8 *p;

	if (!arcount || s->name_len + DNS_QUESTION_FIXED_LEN + OPT_LEN > s->avail)
		return 0;
	p = frame_at(ctx, off, 8);
	if (!p || p[0] != 0 || p[1] != 0 || p[2] != DNS_TYPE_OPT)
		return 0;
	/* owner 1, type 2, UDP size 2, then the TTL: extended RCODE, version, DO and Z */
	*dnssec_ok = (p[7] & DNS_OPT_DO_HIGH) != 0;
	return p[6] == 0 ? 1 : 2;
}

/* Whether the query was sent to a unicast address, the only kind an answer may come from. */
static __always_inline int answerable(struct xdp_md *ctx, struct ccxdp_scratch *s)
{
	struct ethhdr *eth = frame_at(ctx, 0, sizeof(*eth));

	if (!eth || (eth->h_dest[0] & 1)) /* broadcast or multicast MAC */
		return 0;
	if (s->ipv6) {
		struct ipv6hdr *ip6 = frame_at(ctx, s->l3_off, sizeof(*ip6));

		return ip6 && ip6->daddr.in6_u.u6_addr8[0] != 0xff;
	} else {
		struct iphdr *ip = frame_at(ctx, s->l3_off, sizeof(*ip));

		/* 224.0.0.0 and up: multicast, reserved, the limited broadcast */
		return ip && (bpf_ntohl(ip->daddr) >> 28) < 0xe;
	}
}

/*
 * Leave the query's IPv4 options or IPv6 extension headers out (the header comment says why):
 * the Ethernet and IP headers move up to meet the UDP header, the frame starts that much later,
 * and the offsets in the scratch value follow. Returns CCXDP_CONTINUE, or XDP_DROP.
 */
static __always_inline int strip_ip_extras(struct xdp_md *ctx, struct ccxdp_scratch *s)
{
	__u64 keep = s->l3_off + (s->ipv6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr));
	int strip = (int)s->l4_off - (int)keep;

	if (strip == 0)
		return CCXDP_CONTINUE;
	keep &= 0xffff; /* bound it where the verifier can see */
	if (strip < 0 || keep < 1 || keep > sizeof(s->move_buf))
		return XDP_DROP;
	if (bpf_xdp_load_bytes(ctx, 0, s->move_buf, keep) ||
	    bpf_xdp_store_bytes(ctx, strip, s->move_buf, keep) || bpf_xdp_adjust_head(ctx, strip))
		return XDP_DROP;
	s->l4_off -= strip;
	s->qoff -= strip;
	if (s->ipv6) {
		struct ipv6hdr *ip6 = frame_at(ctx, s->l3_off, sizeof(*ip6));

		if (!ip6)
			return XDP_DROP;
		ip6->nexthdr = IPPROTO_UDP; /* payload_len is set with the answer's length */
	} else {
		struct iphdr *ip = frame_at(ctx, s->l3_off, sizeof(*ip));

		if (!ip)
			return XDP_DROP;
		ip->ihl = 5; /* tot_len and the checksum are set with the answer's length */
	}
	return CCXDP_CONTINUE;
}

static __always_inline void plan_answer(struct answer_plan *plan, int action, __u16 qtype,
					__u16 qclass)
{
	int nodata = 0;

	if (qclass != DNS_CLASS_IN) {
		plan->rcode = DNS_RCODE_REFUSED;
		return;
	}
	switch (action) {
	case CCXDP_ACTION_NXDOMAIN:
		plan->rcode = DNS_RCODE_NXDOMAIN;
		nodata = 1;
		break;
	case CCXDP_ACTION_SINKHOLE:
		if (qtype == DNS_TYPE_A) {
			plan->rr_type = DNS_TYPE_A;
			plan->rr_len = RR_FIXED_LEN + 4;
			plan->an = 1;
		} else if (qtype == DNS_TYPE_AAAA) {
			plan->rr_type = DNS_TYPE_AAAA;
			plan->rr_len = RR_FIXED_LEN + 16;
			plan->an = 1;
		} else {
			nodata = 1;
		}
		break;
	case CCXDP_ACTION_NODATA:
		nodata = 1;
		break;
	case CCXDP_ACTION_TC:
		plan->tc = 1;
		break;
	case CCXDP_ACTION_REFUSED:
	default:
		plan->rcode = DNS_RCODE_REFUSED;
		break;
	}
	if (nodata) {
		plan->rr_type = DNS_TYPE_SOA;
		plan->rr_len = RR_FIXED_LEN + SOA_RDATA_LEN;
	}
}

/* Write a 16-bit or a 32-bit value at p, in network order, unaligned. */
static __always_inline void put16(__u8 *p, __u16 v)
{
	p[0] = v >> 8;
	p[1] = v;
}

static __always_inline void put32(__u8 *p, __u32 v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

/* Fill the record after the question, at offset off of the frame. */
static __always_inline int write_record(struct xdp_md *ctx, __u32 off,
					const struct answer_plan *plan,
					const struct ccxdp_config *cfg)
{
	__u8 *rec;

	if (plan->rr_type == DNS_TYPE_A) {
		rec = frame_at(ctx, off, RR_FIXED_LEN + 4);
		if (!rec)
			return -1;
		__builtin_memcpy(rec + 6, &cfg->answer_ttl, 4);
		put16(rec + 10, 4);
		__builtin_memcpy(rec + 12, cfg->sinkhole_v4, 4);
	} else if (plan->rr_type == DNS_TYPE_AAAA) {
		rec = frame_at(ctx, off, RR_FIXED_LEN + 16);
		if (!rec)
			return -1;
		__builtin_memcpy(rec + 6, &cfg->answer_ttl, 4);
		put16(rec + 10, 16);
		__builtin_memcpy(rec + 12, cfg->sinkhole_v6, 16);
	} else {
		rec = frame_at(ctx, off, RR_FIXED_LEN + SOA_RDATA_LEN);
		if (!rec)
			return -1;
		__builtin_memcpy(rec + 6, &cfg->negative_ttl, 4);
		put16(rec + 10, SOA_RDATA_LEN);
		rec[12] = 0; /* MNAME: the root */
		rec[13] = 0; /* RNAME: the root */
		put32(rec + 14, SOA_SERIAL);
		put32(rec + 18, SOA_REFRESH);
		put32(rec + 22, SOA_RETRY);
		put32(rec + 26, SOA_EXPIRE);
		__builtin_memcpy(rec + 30, &cfg->negative_ttl, 4);
	}
	put16(rec, DNS_PTR_QNAME);
	put16(rec + 2, plan->rr_type);
	put16(rec + 4, DNS_CLASS_IN);
	return 0;
}

/* The OPT at offset off of the frame: no options, DO clear, BADVERS when planned. */
static __always_inline int write_opt(struct xdp_md *ctx, __u32 off, const struct answer_plan *plan,
				     const struct ccxdp_config *cfg)
{
	__u8 *rec = frame_at(ctx, off, OPT_LEN);

	if (!rec)
		return -1;
	rec[0] = 0; /* owner: the root */
	put16(rec + 1, DNS_TYPE_OPT);
	__builtin_memcpy(rec + 3, &cfg->edns_udp_size, 2);
	/* extended RCODE, version 0, flags: DO as the query had it */
	put32(rec + 5, (plan->badvers ? DNS_EXT_RCODE_BADVERS << 24 : 0) |
			       (plan->dnssec_ok ? DNS_OPT_DO : 0));
	put16(rec + 9, 0); /* no options */
	return 0;
}

/*
 * Ones'-complement sum of the answer's UDP datagram, which ends the frame, read straight from
 * it in 8-byte words (then 4, 2 and 1 for the last few bytes). Copying the datagram out and
 * summing it with helpers (bpf_xdp_load_bytes, bpf_csum_diff: five calls for IPv4) took about
 * 170 ns of an answer on the 2-core machine, where every return goes through the CPU
 * mitigations' thunk; summed here it takes about 40. Each word adds as its two 32-bit halves
 * in native order, as csum_partial does; a 64-bit sum of at most 2 * 44 of them cannot carry
 * out, so csum_fold() finishes it. The offset lives in the scratch value, like the name loops'
 * (dns.h): every iteration reaches the next in the same state and the verifier prunes it.
 */
static __always_inline int udp_sum(struct xdp_md *ctx, struct ccxdp_scratch *s, __u32 len,
				   __u64 *sum)
{
	__u64 acc = 0;

	if (len > CCXDP_MAX_ANSWER_UDP)
		return -1;
	s->csum_off = 0;
	for (int i = 0; i < CCXDP_MAX_ANSWER_UDP / 8; i++) {
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		__u32 off = s->csum_off;
		__u8 *p = data + ((s->l4_off + off) & CCXDP_MAX_FRAME_OFF);
		__u64 w;

		if (off + 8 > len)
			break;
		if ((void *)(p + 8) > data_end)
			return -1;
		/* unaligned loads are fine here */
		w = *(alias_u64 *)__builtin_assume_aligned(p, 8);
		acc += (w & 0xffffffff) + (w >> 32);
		s->csum_off = off + 8;
	}
	{
		void *data = (void *)(long)ctx->data;
		void *data_end = (void *)(long)ctx->data_end;
		__u32 off = s->csum_off, left = len - off;
		__u8 *p = data + ((s->l4_off + off) & CCXDP_MAX_FRAME_OFF);

		if (off > len || left >= 8)
			return -1;
		/* Each piece stays in its lanes: 4 and 2 bytes start at an even offset, and a last
		 * odd byte is the first of its pair (the low byte in native order). */
		if (left & 4) {
			if ((void *)(p + 4) > data_end)
				return -1;
			acc += *(alias_u32 *)__builtin_assume_aligned(p, 4);
			p += 4;
		}
		if (left & 2) {
			if ((void *)(p + 2) > data_end)
				return -1;
			acc += *(alias_u16 *)__builtin_assume_aligned(p, 2);
			p += 2;
		}
		if (left & 1) {
			if ((void *)(p + 1) > data_end)
				return -1;
			acc += *p;
		}
	}
	*sum += acc;
	return 0;
}

/* Sum of n 32-bit words from p, in native order (header fields the answer has set). */
static __always_inline __u64 words_sum(const void *p, int n)
{
	const alias_u32 *w = p;
	__u64 acc = 0;

#pragma unroll
	for (int i = 0; i < n; i++)
		acc += w[i];
	return acc;
}

/*
 * Make the frame delta bytes longer when its tail has no room: some frames (a veth's, an skb
 * in generic mode) come with little tailroom, but XDP always leaves headroom. The frame grows
 * at the head, and the first keep bytes (headers and question) move to the new start, so every
 * offset in the scratch value stays right. Returns 0 on success.
 */
static __always_inline int grow_at_head(struct xdp_md *ctx, struct ccxdp_scratch *s, int delta,
					__u64 keep)
{
	keep &= 0xffff; /* computed with 64-bit arithmetic: bound it where the verifier can see */
	if (delta <= 0 || keep < 1 || keep > sizeof(s->move_buf))
		return -1;
	if (bpf_xdp_adjust_head(ctx, -delta))
		return -1;
	if (bpf_xdp_load_bytes(ctx, delta, s->move_buf, keep) ||
	    bpf_xdp_store_bytes(ctx, 0, s->move_buf, keep))
		return -1;
	return 0;
}

/* What the answer is to be, from the query's header, question and OPT: the records of the
 * action, or BADVERS alone for a later EDNS version. */
static __always_inline int plan_from_query(struct xdp_md *ctx, struct ccxdp_scratch *s, int action,
					   struct answer_plan *plan)
{
	struct dnshdr *dns = frame_at(ctx, plan->dns_off, sizeof(*dns));
	__u8 *q = frame_at(ctx, s->qoff + s->name_len, DNS_QUESTION_FIXED_LEN);
	__u16 qtype, qclass, arcount;
	int opt;

	if (!dns || !q)
		return XDP_DROP;
	qtype = (q[0] << 8) | q[1];
	qclass = (q[2] << 8) | q[3];
	plan->query_flags = bpf_ntohs(dns->flags);
	arcount = bpf_ntohs(dns->arcount);
	opt = query_opt(ctx, s, arcount, &plan->dnssec_ok);
	plan->opt = opt != 0;
	if (opt == 2)
		plan->badvers = 1; /* an answer with no records but the OPT */
	else
		plan_answer(plan, action, qtype, qclass);
	return CCXDP_CONTINUE;
}

/* Make the frame the answer's size: headers, question, then the planned records. */
static __always_inline int resize_frame(struct xdp_md *ctx, struct ccxdp_scratch *s,
					struct answer_plan *plan)
{
	__u32 dns_len, frame_len;
	int delta;

	plan->qend = sizeof(struct dnshdr) + s->name_len + DNS_QUESTION_FIXED_LEN;
	dns_len = plan->qend + plan->rr_len + (plan->opt ? OPT_LEN : 0);
	plan->udp_len = sizeof(struct udphdr) + dns_len;
	frame_len = (long)ctx->data_end - (long)ctx->data;
	delta = (int)(s->l4_off + plan->udp_len) - (int)frame_len;
	if (grow_tail(ctx, delta) && grow_at_head(ctx, s, delta, plan->dns_off + plan->qend))
		return XDP_DROP;
	return CCXDP_CONTINUE;
}

/* Back to where the query came from: MACs and UDP ports swapped, the UDP length set. */
static __always_inline int reverse_eth_udp(struct xdp_md *ctx, struct ccxdp_scratch *s,
					   const struct answer_plan *plan)
{
	struct ethhdr *eth = frame_at(ctx, 0, sizeof(*eth));
	struct udphdr *udp;
	__u8 mac[ETH_ALEN];
	__be16 port;

	if (!eth)
		return XDP_DROP;
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	udp = frame_at(ctx, s->l4_off, sizeof(*udp));
	if (!udp)
		return XDP_DROP;
	port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(plan->udp_len);
	udp->check = 0;
	return CCXDP_CONTINUE;
}

/* The DNS header of the answer, then its record and OPT after the question. */
static __always_inline int write_dns(struct xdp_md *ctx, const struct answer_plan *plan,
				     const struct ccxdp_config *cfg)
{
	struct dnshdr *dns = frame_at(ctx, plan->dns_off, sizeof(*dns));
	__u16 flags = plan->query_flags;

	if (!dns)
		return XDP_DROP;
	dns->flags = bpf_htons(DNS_FLAG_QR | (flags & (DNS_FLAG_RD | DNS_FLAG_CD)) | DNS_FLAG_RA |
			       (plan->tc ? DNS_FLAG_TC : 0) | plan->rcode);
	dns->ancount = bpf_htons(plan->an);
	dns->nscount = bpf_htons(plan->rr_type && !plan->an ? 1 : 0);
	dns->arcount = bpf_htons(plan->opt);

	if (plan->rr_type && write_record(ctx, plan->dns_off + plan->qend, plan, cfg))
		return XDP_DROP;
	if (plan->opt && write_opt(ctx, plan->dns_off + plan->qend + plan->rr_len, plan, cfg))
		return XDP_DROP;
	return CCXDP_CONTINUE;
}

/* IPv6 addresses swapped, hop limit and length set; *sum gets the UDP pseudo-header. */
static __always_inline int reverse_ipv6(struct xdp_md *ctx, struct ccxdp_scratch *s,
					const struct answer_plan *plan, __u64 *sum)
{
	struct ipv6hdr *ip6 = frame_at(ctx, s->l3_off, sizeof(*ip6));
	struct in6_addr addr;

	if (!ip6)
		return XDP_DROP;
	addr = ip6->saddr;
	ip6->saddr = ip6->daddr;
	ip6->daddr = addr;
	ip6->hop_limit = ANSWER_TTL_HOP;
	ip6->payload_len = bpf_htons(s->l4_off - s->l3_off - sizeof(*ip6) + plan->udp_len);
	/* Pseudo-header: both addresses, then length and next header as 32-bit words. */
	*sum = words_sum(&ip6->saddr, 8) + bpf_htonl(plan->udp_len) + bpf_htonl(IPPROTO_UDP);
	return CCXDP_CONTINUE;
}

/* IPv4 addresses swapped, TTL, length and header checksum set; *sum gets the UDP
 * pseudo-header. */
static __always_inline int reverse_ipv4(struct xdp_md *ctx, struct ccxdp_scratch *s,
					const struct answer_plan *plan, __u64 *sum)
{
	struct iphdr *ip = frame_at(ctx, s->l3_off, sizeof(*ip));
	__be32 addr;

	if (!ip)
		return XDP_DROP;
	addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	ip->ttl = ANSWER_TTL_HOP;
	ip->tot_len = bpf_htons(sizeof(*ip) + plan->udp_len);
	ip->check = 0;
	/* strip_ip_extras() left no options: five words. */
	ip->check = ~csum_fold(words_sum(ip, sizeof(*ip) / 4));
	/* Pseudo-header: both addresses, zero and protocol, UDP length. */
	*sum = (__u64)ip->saddr + ip->daddr + bpf_htonl((IPPROTO_UDP << 16) | plan->udp_len);
	return CCXDP_CONTINUE;
}

/* The UDP checksum over the pseudo-header's sum and the whole datagram. */
static __always_inline int set_udp_checksum(struct xdp_md *ctx, struct ccxdp_scratch *s,
					    const struct answer_plan *plan, __u64 sum)
{
	struct udphdr *udp;

	if (udp_sum(ctx, s, plan->udp_len, &sum))
		return XDP_DROP;
	udp = frame_at(ctx, s->l4_off, sizeof(*udp));
	if (!udp)
		return XDP_DROP;
	udp->check = ~csum_fold(sum);
	if (!udp->check)
		udp->check = 0xffff; /* 0 means "no checksum" in UDP */
	return XDP_TX;
}

/*
 * Turn the query, sent to a unicast address (answerable()), into the answer the action calls
 * for. Returns XDP_TX, or XDP_DROP when the frame could not be made the answer's size (the
 * query must not reach the resolver either way). Each step returns XDP_DROP or
 * CCXDP_CONTINUE, the last XDP_TX.
 */
static __always_inline int build_answer(struct xdp_md *ctx, struct ccxdp_scratch *s,
					const struct ccxdp_config *cfg, int action)
{
	struct answer_plan plan = {};
	__u64 sum;
	int verdict;

	verdict = strip_ip_extras(ctx, s);
	if (verdict >= 0)
		goto out;
	plan.dns_off = s->l4_off + sizeof(struct udphdr);
	verdict = plan_from_query(ctx, s, action, &plan);
	if (verdict >= 0)
		goto out;
	verdict = resize_frame(ctx, s, &plan);
	if (verdict >= 0)
		goto out;
	/* Every packet pointer is void after adjust_tail: from here, offsets only. */
	verdict = reverse_eth_udp(ctx, s, &plan);
	if (verdict >= 0)
		goto out;
	verdict = write_dns(ctx, &plan, cfg);
	if (verdict >= 0)
		goto out;
	if (s->ipv6)
		verdict = reverse_ipv6(ctx, s, &plan, &sum);
	else
		verdict = reverse_ipv4(ctx, s, &plan, &sum);
	if (verdict >= 0)
		goto out;
	verdict = set_udp_checksum(ctx, s, &plan, sum);
out:
	return verdict;
}

/*
 * A blocked query over TCP. Answering it would take a TCP stack, and one XDP call sends one
 * frame, so the segment that carries the query becomes, in place, a bare FIN+ACK to the
 * resolver at the query's own sequence number and passes up the stack: its payload is cut, so
 * no byte of the query reaches the resolver, and to the resolver's TCP the client has closed
 * its side before sending anything. The resolver reads end of stream, closes its socket
 * (unbound, BIND, Knot and PowerDNS all do at once), and its FIN reaches the client, which
 * reads end of stream at once: "end of file" from dig, an error from kdig and dnspython. No
 * slot of the resolver stays taken, and no state is kept here.
 *
 * A RST built here would serve one side only: XDP_TX of a RST to the client leaves the
 * resolver's connection open until its idle timeout (its handshake already reached it; XDP
 * sees only the client's direction), and a RST passed to the resolver closes its socket
 * silently, leaving the client to learn only from the resolver's RST to its retransmission, an
 * RTO (200 ms or more) later.
 *
 * What follows stays out of the resolver too: the client's TCP resends the query's bytes after
 * the one its FIN took, at the resolver's next expected sequence number, where its kernel
 * ignores them (CLOSE_WAIT) or resets the connection (once the resolver closed). The query
 * itself is counted once: its own segment comes back only if the resolver's ACK was lost.
 * Returns XDP_PASS, or XDP_DROP if the frame could not be rewritten.
 */
static __always_inline int close_tcp_query(struct xdp_md *ctx, struct ccxdp_scratch *s)
{
	struct tcphdr *tcp = frame_at(ctx, s->l4_off, sizeof(*tcp));
	__u32 hdr_len, frame_len;
	__u64 sum;

	if (!tcp)
		return XDP_DROP;
	hdr_len = (((__u8 *)tcp)[12] >> 4) * 4;
	frame_len = (long)ctx->data_end - (long)ctx->data;
	if (bpf_xdp_adjust_tail(ctx, (int)(s->l4_off + hdr_len) - (int)frame_len))
		return XDP_DROP;
	/* Every packet pointer is void after adjust_tail: from here, offsets only. */
	if (s->ipv6) {
		struct ipv6hdr *ip6 = frame_at(ctx, s->l3_off, sizeof(*ip6));

		if (!ip6)
			return XDP_DROP;
		ip6->payload_len = bpf_htons(s->l4_off - s->l3_off - sizeof(*ip6) + hdr_len);
		sum = words_sum(&ip6->saddr, 8) + bpf_htonl(hdr_len) + bpf_htonl(IPPROTO_TCP);
	} else {
		struct iphdr *ip = frame_at(ctx, s->l3_off, sizeof(*ip));
		__be16 old_len;

		if (!ip)
			return XDP_DROP;
		old_len = ip->tot_len;
		ip->tot_len = bpf_htons(s->l4_off - s->l3_off + hdr_len);
		/* The header keeps its options: update its checksum for the new length (RFC 1624). */
		ip->check = ~csum_fold((__u64)(__u16)~ip->check + (__u16)~old_len + ip->tot_len);
		sum = (__u64)ip->saddr + ip->daddr + bpf_htonl((IPPROTO_TCP << 16) | hdr_len);
	}
	tcp = frame_at(ctx, s->l4_off, sizeof(*tcp));
	if (!tcp)
		return XDP_DROP;
	((__u8 *)tcp)[TCP_FLAGS_BYTE] = TCP_FLAG_FIN | TCP_FLAG_ACK;
	tcp->urg_ptr = 0;
	tcp->check = 0;
	/* The checksum over the header (options included), which is now the whole segment. */
#pragma unroll
	for (int i = 0; i < 15; i++) {
		__u8 *w;

		if (i * 4 >= hdr_len)
			break;
		w = frame_at(ctx, s->l4_off + i * 4, 4);
		if (!w)
			return XDP_DROP;
		sum += *(alias_u32 *)__builtin_assume_aligned(w, 4);
	}
	tcp = frame_at(ctx, s->l4_off, sizeof(*tcp));
	if (!tcp)
		return XDP_DROP;
	tcp->check = ~csum_fold(sum);
	return XDP_PASS;
}

#endif /* CCXDP_ANSWER_H */
