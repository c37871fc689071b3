/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map of the program. Maps that hold state shared with the control plane are pinned
 * under CCXDP_PIN_DIR so any later CLI call, a restart of the control plane, and the program
 * attached to a second interface all reach the same maps.
 */
#ifndef CCXDP_MAPS_H
#define CCXDP_MAPS_H

#include "ccxdp_shared.h"

/* The loader passes the pin folder; the default is what the CLI uses unless told otherwise. */
#ifndef CCXDP_PIN_DIR
#define CCXDP_PIN_DIR "/sys/fs/bpf/ccxdp"
#endif

/* Entries per collection buffer, one per (source address, category) that hit a block entry
 * between two collections; a large ISP resolver sees about a million subscriber addresses. */
#ifndef CCXDP_MAX_SOURCES
#define CCXDP_MAX_SOURCES 1048576
#endif

/* An answer's UDP datagram: header 8, DNS header 12, question up to 255 + 4, an AAAA
 * record 28 or an SOA 34, an OPT 11 (324 in all); a multiple of 8, the words its checksum
 * loop reads (answer.h). */
#define CCXDP_MAX_ANSWER_UDP 352

/* The most a query's headers and question take when they must move: Ethernet 14, two VLAN
 * tags 8, IPv4 with options 60, UDP 8, DNS 12, question 259; rounded up. IPv6 extension
 * headers beyond that make the answer fall back to a drop. */
#define CCXDP_MAX_MOVE 368

/* The QNAME's offset is masked with this for the verifier. The headers before it are at most
 * 14 + 2 * 4 (VLAN) + 40 + CCXDP_MAX_IPV6_EXT * 2048 + 8 (UDP) + 12 (DNS) = 8274 bytes. */
#define CCXDP_MAX_FRAME_OFF 0x3fff

#define CCXDP_PIN(name) CCXDP_PIN_DIR "/" name

/*
 * Global counters, indexed by enum ccxdp_outcome, then CCXDP_STAT_MALFORMED_BASE + enum
 * ccxdp_malformed, CCXDP_STAT_EVENT_BASE + enum ccxdp_event and CCXDP_STAT_ACTION_BASE +
 * enum ccxdp_action; value: count, host order. Written by the program on every frame.
 * Per-CPU because XDP runs in softirq on each CPU: no atomics, no contention.
 */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ccxdp_stats_v5, CCXDP_STAT_MAX,
		 CCXDP_PIN(CCXDP_MAP_STATS));

/*
 * The name table: every listed name's hash and entry in buckets of one cache line,
 * double-buffered so that a new list replaces the old one atomically.
 *
 * Buffer b (0 or 1) is buckets [b * CCXDP_NAME_BUCKETS, (b + 1) * CCXDP_NAME_BUCKETS) of
 * struct ccxdp_name_bucket (ccxdp_shared.h). A suffix's hash picks its first bucket by its top
 * bits and is compared with the tags there: judging it reads that one line, listed or not.
 * Only when its first bucket overflowed (CCXDP_NB_SPILLED, about 1% of buckets with the table
 * full) is its second bucket read too. The control plane builds the buckets
 * (ccxdp/datapath/bulk.c) with about 3 names a bucket in a full table, 7 slots each, so
 * that overflow stays rare: 43 bytes a name with both buffers full, 45 with the filter below.
 *
 * Why a swap is atomic: the control plane writes a whole new list into the buffer no packet
 * reads, then changes entry CCXDP_NACT_LIVE of ccxdp_nact, one aligned 32-bit word whose only
 * changing byte is 0 or 1 (a store the CPU makes at once). A packet reads that word once and
 * then only that buffer, so it sees the old list or the new one, never a mix; after the
 * switch the control plane waits for an RCU grace period (membarrier), which every XDP run in
 * flight finishes within, before it calls the swap done or writes that buffer again. Written
 * only by the control plane (ccxdp/datapath/nametable.py); host order. Mappable (so a
 * million names are one copy, and the buckets start page-aligned: one line each).
 */
#ifndef CCXDP_NAME_BUCKETS
#define CCXDP_NAME_BUCKETS 349526 /* a million names, 3 a bucket: ceil(2^20 / 3) */
#endif
BPF_TABLE_PINNED("array", __u32, struct ccxdp_name_bucket, ccxdp_nbkt_v1,
		 2 * CCXDP_NAME_BUCKETS, CCXDP_PIN(CCXDP_MAP_NAME_BUCKETS), BPF_F_MMAPABLE);
BPF_TABLE_PINNED("array", __u32, __u32, ccxdp_nact_v2, CCXDP_NACT_ENTRIES,
		 CCXDP_PIN(CCXDP_MAP_NAME_ACTIVE));

/*
 * The name filter: one 64-bit word per bucket, in which each name of either buffer whose
 * first bucket it is sets CCXDP_NAME_FILTER_BITS, so that a suffix nobody lists (nearly all of
 * them) is judged by a word in a 2.7 MB array rather than by a line of the 43 MB table. Under
 * real traffic that is the difference between the upper suffixes of unlisted names staying
 * in the cache and TLB (one dense array) or each taking a page of the table. The bucket's
 * address does not depend on the word, only the decision to read it, so for a listed name
 * both loads are in flight at once. About 1% false positives with the table full. The control
 * plane sets a list's bits before it goes live and clears bits only by rebuilding from the
 * live list once no packet can read the other buffer, so the filter never says "no" for a
 * listed name. Key: first bucket. Value: host order. Mappable.
 */
BPF_TABLE_PINNED("array", __u32, __u64, ccxdp_nfilt_v1, CCXDP_NAME_BUCKETS,
		 CCXDP_PIN(CCXDP_MAP_NAME_FILTER), BPF_F_MMAPABLE);

/*
 * Hits per source, double-buffered so that a collector takes every hit exactly once.
 * Key: struct ccxdp_source_key (address in network order; buffer = epoch & 1). Value: struct
 * ccxdp_source_hits, host order. Written by the program on every blocked or monitored query
 * (atomic adds: one entry is shared by all CPUs); read and deleted by the collector
 * (ccxdp/hits/collector.py).
 *
 * ccxdp_sepoch holds the epoch, one __u64 written only by the collector. A query reads it
 * once and counts into buffer epoch & 1; the collector moves the epoch on by one, waits for
 * an RCU grace period (membarrier: every XDP run in flight ends within it), and then owns the
 * old buffer: no packet writes there again until the epoch comes back round, by which time
 * the collector has stored and deleted every entry in it. Only the epoch's low byte matters
 * here, and a byte is stored at once, so a query sees the old epoch or the new one.
 *
 * A plain hash, not an LRU: an entry is never evicted behind the collector's back. When the
 * map is full a new source cannot be counted: the query is still blocked, and
 * CCXDP_EV_SOURCE_LOST counts it, while every source already in the buffer keeps counting.
 * That is the deliberate choice: an LRU would let a flood of new sources evict the lines
 * whose hits are already counted. Sources outside the address plan (ccxdp_plan) never get
 * an entry, so spoofed floods from outside cannot fill it. Room for both buffers, allocated as sources come
 * (BPF_F_NO_PREALLOC): an idle map costs nothing.
 */
BPF_TABLE_PINNED("hash", struct ccxdp_source_key, struct ccxdp_source_hits, ccxdp_srcs_v3,
		 2 * CCXDP_MAX_SOURCES, CCXDP_PIN(CCXDP_MAP_SOURCES), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", __u32, __u64, ccxdp_sepoch_v1, 1,
		 CCXDP_PIN(CCXDP_MAP_SOURCE_EPOCH));

/*
 * Run-time settings, double-buffered like the name table: ccxdp_cact (one __u32, 0 or 1) says
 * which of the two struct ccxdp_config is live. The control plane waits for an RCU grace
 * period since the last switch, writes the other one and switches the word
 * (ccxdp/datapath/loader.py); a packet reads the word once, so it sees the old settings or the new
 * ones, never a mix. Arrays, so both reads are inlined: the hash map this replaces cost a call
 * and a hash of the key on every matched query. A live entry whose default_action is 0 was
 * never written.
 */
BPF_TABLE_PINNED("array", __u32, struct ccxdp_config, ccxdp_config_v5, 2,
		 CCXDP_PIN(CCXDP_MAP_CONFIG));
BPF_TABLE_PINNED("array", __u32, __u32, ccxdp_cact_v1, 1, CCXDP_PIN(CCXDP_MAP_CONFIG_ACTIVE));

/* Opted-out source prefixes, looked up once per judged query. Key: struct ccxdp_lpm_key
 * (address in network order). Value: 1. Written by the control plane. */
#ifndef CCXDP_MAX_EXEMPT
#define CCXDP_MAX_EXEMPT 65536 /* opted-out lines are few; prefixes, not addresses */
#endif
BPF_TABLE_PINNED("lpm_trie", struct ccxdp_lpm_key, __u8, ccxdp_exempt_v1, CCXDP_MAX_EXEMPT,
		 CCXDP_PIN(CCXDP_MAP_EXEMPT), BPF_F_NO_PREALLOC);

/*
 * Which sources the trie may hold, by the gate index of the address (ccxdp_shared.h): 1 where
 * some exempt prefix covers an address with that index. A query from any other line (nearly
 * all of them) skips the trie lookup, a helper call of 10-15 ns per judged query. The control
 * plane sets a prefix's indexes before inserting it and clears them only after deleting it,
 * so the gate is never 0 for an address the trie holds.
 */
BPF_TABLE_PINNED("array", __u32, __u8, ccxdp_exgate_v1, 1 << CCXDP_EXEMPT_GATE_BITS,
		 CCXDP_PIN(CCXDP_MAP_EXEMPT_GATE));

/*
 * The subscriber address plan: the prefixes subscribers' queries come from, as a resolver's
 * access control lists them. Key: struct ccxdp_lpm_key (network order, IPv4 mapped). Value:
 * __u8, 1 for a plan prefix. While a plan is declared the control plane also holds ::/0 with
 * 0, so a source outside every plan prefix finds 0 (counted only globally,
 * CCXDP_EV_OUTSIDE_PLAN) and, with no plan at all, finds nothing (counted per source, as
 * with a plan it covers). Plan prefixes go in before ::/0 and ::/0 goes out before the last of
 * them, so no source is ever judged outside a plan that covers it. Looked up only for a hit,
 * a blocked or monitored query, so a passed query costs nothing more. Written by the control
 * plane (ccxdp/policy/plan.py).
 */
#ifndef CCXDP_MAX_PLAN
#define CCXDP_MAX_PLAN 65536 /* an ISP's pools, not its lines */
#endif
BPF_TABLE_PINNED("lpm_trie", struct ccxdp_lpm_key, __u8, ccxdp_plan_v1, CCXDP_MAX_PLAN,
		 CCXDP_PIN(CCXDP_MAP_PLAN), BPF_F_NO_PREALLOC);

/* Judged destination ports, over UDP and TCP. Key: port, host order. Value: 1 to judge.
 * Control plane. */
BPF_TABLE_PINNED("array", __u32, __u8, ccxdp_ports_v1, 65536, CCXDP_PIN(CCXDP_MAP_PORTS));

/* The name-hash key, one entry. Written once by the control plane from its key file. */
BPF_TABLE_PINNED("array", __u32, struct ccxdp_hash_key, ccxdp_hkey_v2, 1,
		 CCXDP_PIN(CCXDP_MAP_HASH_KEY));

/*
 * Per-CPU working memory for one query: where its name is, the offset of each label (from the
 * QNAME's start), the state of the suffix-hash loop and the source. The name loops work from
 * these offsets rather than from packet pointers (see dns.h for why). Private to one loaded
 * program, not pinned.
 */
struct ccxdp_scratch {
	struct ccxdp_source_key source;
	__u32 qoff;     /* offset of the QNAME from the frame's start */
	__u32 avail;    /* DNS payload bytes from the QNAME on (the UDP length ends it) */
	__u16 l3_off;   /* offset of the IP header */
	__u16 l4_off;   /* offset of the UDP or TCP header */
	__u8 ipv6;      /* 1: IPv6, 0: IPv4 */
	__u8 tcp;       /* 1: the query came over TCP (after its 2-byte length), 0: UDP */
	__u8 pad[2];
	__u8 label_off[DNS_MAX_LABELS + 1];
	__u32 label;    /* index of the label being hashed */
	__u32 pos;      /* offset from the QNAME of the next byte to hash */
	__u32 rem;      /* bytes of the current label (length byte included) still to hash */
	__u32 word;     /* index of the next word within the current label (0-7) */
	__u32 nlabels;  /* labels in the QNAME */
	__u32 name_len; /* QNAME length in wire form, including the root byte */
	__u32 matched;  /* 1 once an entry matched; match then holds the most specific */
	__u32 buffer;   /* the name-table buffer this packet reads (ccxdp_nact) */
	struct ccxdp_entry match;
	__u32 csum_off; /* offset in the answer's UDP datagram of the next word to sum */
	/* Headers and question of a query moved to make room at the head (answer.h). */
	__u8 move_buf[CCXDP_MAX_MOVE];
};

BPF_PERCPU_ARRAY(ccxdp_scratch, struct ccxdp_scratch, 1);

#endif /* CCXDP_MAPS_H */
