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

/* An ISP's threat feeds run to about a million C&C names. */
#ifndef CCXDP_MAX_NAMES
#define CCXDP_MAX_NAMES 1048576
#endif

/* One entry per (source address, category) that hit a block entry; a large ISP resolver
 * sees about a million subscriber addresses. LRU: when full, the oldest sources go first. */
#ifndef CCXDP_MAX_SOURCES
#define CCXDP_MAX_SOURCES 1048576
#endif

#define CCXDP_PIN(name) CCXDP_PIN_DIR "/" name

/*
 * Global counters, indexed by enum ccxdp_outcome then CCXDP_STAT_MALFORMED_BASE + enum
 * ccxdp_malformed; value: packets, host order. Written by the program on every frame.
 * Per-CPU because XDP runs in softirq on each CPU: no atomics, no contention.
 */
BPF_TABLE_PINNED("percpu_array", __u32, __u64, ccxdp_stats_v1, CCXDP_STAT_MAX,
		 CCXDP_PIN(CCXDP_MAP_STATS));

/*
 * Block entries. Key: keyed 64-bit hash of the name in wire form (dns.h), host order.
 * Value: struct ccxdp_entry. Written by the control plane only; read per DNS query.
 */
BPF_TABLE_PINNED("hash", __u64, struct ccxdp_entry, ccxdp_names_v1, CCXDP_MAX_NAMES,
		 CCXDP_PIN(CCXDP_MAP_NAMES));

/*
 * Hits per source. Key: struct ccxdp_source_key (address in network order). Value: struct
 * ccxdp_source_hits. Written by the program on every blocked query (atomic adds: one entry is
 * shared by all CPUs); read by the collector.
 */
BPF_TABLE_PINNED("lru_hash", struct ccxdp_source_key, struct ccxdp_source_hits, ccxdp_srcs_v1,
		 CCXDP_MAX_SOURCES, CCXDP_PIN(CCXDP_MAP_SOURCES));

/* Judged UDP destination ports. Key: port, host order. Value: 1 to judge. Control plane. */
BPF_TABLE_PINNED("array", __u32, __u8, ccxdp_ports_v1, 65536, CCXDP_PIN(CCXDP_MAP_PORTS));

/* The name-hash key, one entry. Written once by the control plane from its key file. */
BPF_TABLE_PINNED("array", __u32, struct ccxdp_hash_key, ccxdp_hkey_v1, 1,
		 CCXDP_PIN(CCXDP_MAP_HASH_KEY));

/*
 * Per-CPU working memory for one query's name: a copy of the QNAME (with slack so that an
 * 8-byte load at any name offset stays inside), the offset of each label, and the state of the
 * suffix-hash loop (see dns.h for why that state lives here and not in registers).
 * Private to one loaded program, not pinned.
 */
struct ccxdp_scratch {
	__u8 name[DNS_MAX_NAME_LEN + 1 + 8];
	__u8 label_off[DNS_MAX_LABELS + 1];
	__u64 hash;     /* running hash of the suffix walked so far */
	__u32 label;    /* index of the label being hashed */
	__u32 pos;      /* offset in name[] of the next byte to hash */
	__u32 rem;      /* bytes of the current label still to hash */
	__u32 nlabels;  /* labels in the QNAME */
	__u32 name_len; /* QNAME length in wire form, including the root byte */
	__u32 matched;  /* 1 once an entry matched; match then holds the most specific */
	struct ccxdp_entry match;
};

BPF_PERCPU_ARRAY(ccxdp_scratch, struct ccxdp_scratch, 1);

#endif /* CCXDP_MAPS_H */
