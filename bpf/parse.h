/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Bounds-checked L2-L4 parsers over a cursor that carries the packet's end.
 * Each parse_<hdr>() checks that the whole header is inside the packet, advances the cursor
 * past it and returns it, or returns NULL when the packet is too short. Checks are written
 * one way, on typed pointers, so the verifier sees the comparison it needs.
 */
#ifndef CCXDP_PARSE_H
#define CCXDP_PARSE_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>

#include "ccxdp_shared.h"

/* VLAN tags we look through: 802.1Q and 802.1ad (QinQ), at most two deep. */
#define CCXDP_MAX_VLAN_TAGS 2
/* IPv6 extension headers we walk before giving up on finding UDP. */
#define CCXDP_MAX_IPV6_EXT 4

#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1fff
#define IPV6_FRAG_OFFSET 0xfff8 /* of the fragment header's offset-and-flags word */

/* Flags in byte 13 of the TCP header (RFC 9293 3.1), read as a byte: no bitfields. */
#define TCP_FLAGS_BYTE 13
#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_PSH 0x08
#define TCP_FLAG_ACK 0x10

struct cursor {
	void *pos;
	void *end;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* IPv6 extension header prefix shared by hop-by-hop, routing and destination options. */
struct ipv6_opt_hdr_prefix {
	__u8 nexthdr;
	__u8 hdrlen; /* in 8-byte units, not counting the first 8 bytes */
};

static __always_inline struct ethhdr *parse_ethhdr(struct cursor *c)
{
	struct ethhdr *eth = c->pos;

	if ((void *)(eth + 1) > c->end)
		return NULL;
	c->pos = eth + 1;
	return eth;
}

static __always_inline int proto_is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* Skip up to CCXDP_MAX_VLAN_TAGS tags; returns the inner ethertype (still a VLAN type when
 * there are more tags), or 0 if truncated. */
static __always_inline __be16 parse_vlans(struct cursor *c, __be16 proto)
{
	struct vlan_hdr *vlan;

#pragma unroll
	for (int i = 0; i < CCXDP_MAX_VLAN_TAGS; i++) {
		if (!proto_is_vlan(proto))
			break;
		vlan = c->pos;
		if ((void *)(vlan + 1) > c->end)
			return 0;
		c->pos = vlan + 1;
		proto = vlan->encap_proto;
	}
	return proto;
}

/* An IPv4 header including its options (IHL). */
static __always_inline struct iphdr *parse_iphdr(struct cursor *c)
{
	struct iphdr *ip = c->pos;
	__u32 hdrsize;

	if ((void *)(ip + 1) > c->end)
		return NULL;
	hdrsize = ip->ihl * 4;
	if (hdrsize < sizeof(*ip))
		return NULL;
	if (c->pos + hdrsize > c->end)
		return NULL;
	c->pos += hdrsize;
	return ip;
}

static __always_inline struct ipv6hdr *parse_ipv6hdr(struct cursor *c)
{
	struct ipv6hdr *ip6 = c->pos;

	if ((void *)(ip6 + 1) > c->end)
		return NULL;
	c->pos = ip6 + 1;
	return ip6;
}

/*
 * Walk hop-by-hop, routing and destination-options headers. Returns the next header after
 * them (IPPROTO_FRAGMENT stays as is, so the caller can pass fragments; one of the three when
 * there are more than CCXDP_MAX_IPV6_EXT), or -1 if truncated.
 */
static __always_inline int ipv6_ext_walked(int nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS;
}

static __always_inline int skip_ipv6_ext(struct cursor *c, __u8 nexthdr)
{
	struct ipv6_opt_hdr_prefix *opt;

#pragma unroll
	for (int i = 0; i < CCXDP_MAX_IPV6_EXT; i++) {
		if (!ipv6_ext_walked(nexthdr))
			return nexthdr;
		opt = c->pos;
		if ((void *)(opt + 1) > c->end)
			return -1;
		if (c->pos + (opt->hdrlen + 1) * 8 > c->end)
			return -1;
		nexthdr = opt->nexthdr;
		c->pos += (opt->hdrlen + 1) * 8;
	}
	return nexthdr;
}

/* An IPv6 fragment header (RFC 8200 4.5). */
struct ipv6_frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset in 8-byte units (top 13 bits), then flags */
	__be32 id;
};

/*
 * The destination port of a first fragment, from the transport header that follows its IP
 * header at the cursor: UDP and TCP both carry it at bytes 2-3. Returns the port (host
 * order), -1 when the fragment is not UDP or TCP, or -2 when the port is not in this frame
 * (a first fragment too short to hold it, RFC 1858's tiny fragment).
 */
static __always_inline int first_fragment_port(struct cursor *c, int protocol)
{
	__be16 *ports = c->pos;

	if (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP)
		return -1;
	if ((void *)(ports + 2) > c->end)
		return -2;
	return bpf_ntohs(ports[1]);
}

/* A TCP header including its options (data offset). */
static __always_inline struct tcphdr *parse_tcphdr(struct cursor *c)
{
	struct tcphdr *tcp = c->pos;
	__u32 hdrsize;

	if ((void *)(tcp + 1) > c->end)
		return NULL;
	hdrsize = (((__u8 *)tcp)[12] >> 4) * 4;
	if (hdrsize < sizeof(*tcp))
		return NULL;
	if (c->pos + hdrsize > c->end)
		return NULL;
	c->pos += hdrsize;
	return tcp;
}

static __always_inline struct udphdr *parse_udphdr(struct cursor *c)
{
	struct udphdr *udp = c->pos;

	if ((void *)(udp + 1) > c->end)
		return NULL;
	c->pos = udp + 1;
	return udp;
}

#endif /* CCXDP_PARSE_H */
