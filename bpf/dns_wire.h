/* SPDX-License-Identifier: GPL-2.0 */
/*
 * DNS on the wire (RFC 1035, 2308, 6891): the header, its flag masks, the codes and the record
 * sizes the program reads and writes. Constants only, no code. The name limits
 * (DNS_MAX_NAME_LEN, DNS_MAX_LABEL_LEN, DNS_MAX_LABELS) stay in ccxdp_shared.h, because the
 * control plane reads them there.
 */
#ifndef CCXDP_DNS_WIRE_H
#define CCXDP_DNS_WIRE_H

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
#define DNS_FLAG_AA 0x0400
#define DNS_FLAG_TC 0x0200
#define DNS_FLAG_RD 0x0100
#define DNS_FLAG_RA 0x0080
#define DNS_FLAG_CD 0x0010

#define DNS_RCODE_NOERROR 0
#define DNS_RCODE_NXDOMAIN 3
#define DNS_RCODE_REFUSED 5
#define DNS_EXT_RCODE_BADVERS 1 /* BADVERS (16) >> 4, in the OPT's extended RCODE byte */
#define DNS_OPT_DO 0x8000	/* DNSSEC OK, in the OPT's 16 flag bits (RFC 3225) */
#define DNS_OPT_DO_HIGH 0x80	/* the same bit in the first byte of those flags */

#define DNS_TYPE_A 1
#define DNS_TYPE_SOA 6
#define DNS_TYPE_AAAA 28
#define DNS_TYPE_OPT 41
#define DNS_CLASS_IN 1

#define DNS_LABEL_TYPE_MASK 0xc0 /* 0xc0: compression pointer; 0x40, 0x80: reserved */

#define DNS_QUESTION_FIXED_LEN 4 /* QTYPE 2, QCLASS 2: the question after its name */
#define DNS_PTR_QNAME 0xc00c	 /* compression pointer to the question's name */
#define RR_FIXED_LEN 12		 /* name pointer 2, type 2, class 2, TTL 4, RDLENGTH 2 */
#define SOA_RDATA_LEN 22	 /* MNAME root 1, RNAME root 1, five 32-bit values */
#define OPT_LEN 11		 /* root owner 1, type 2, UDP size 2, TTL 4, RDLENGTH 2 */

#endif /* CCXDP_DNS_WIRE_H */
