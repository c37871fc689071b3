/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Used by kernel and user space: the only header ccxdp's Python reads.
 *
 * Every struct here crosses the C/Python boundary through a BPF map, so fields are
 * fixed-width, padding is explicit, and there are no bitfields and no enum-typed fields.
 * Python mirrors these in ccxdp/datapath/shared.py; tests/datapath/test_shared.py checks
 * sizes, offsets and enum values against the bcc-compiled types and this file.
 */
#ifndef CCXDP_SHARED_H
#define CCXDP_SHARED_H

/* DNS limits (RFC 1035 2.3.4): a name is at most 255 bytes in wire form, a label 63. */
#define DNS_MAX_NAME_LEN 255
#define DNS_MAX_LABEL_LEN 63
/* 255 bytes hold at most 127 one-byte labels plus the root's zero byte. */
#define DNS_MAX_LABELS 127

/* Map names: ccxdp_<noun>, at most 15 bytes (bcc truncates to BPF_OBJ_NAME_LEN - 1). A map
 * gets a new _vN when its layout changes, because a pinned map is reused without a type check. */
#define CCXDP_MAP_STATS "ccxdp_stats_v5"
#define CCXDP_MAP_NAME_BUCKETS "ccxdp_nbkt_v1"
#define CCXDP_MAP_NAME_ACTIVE "ccxdp_nact_v2"
#define CCXDP_MAP_NAME_FILTER "ccxdp_nfilt_v1"
#define CCXDP_MAP_SOURCES "ccxdp_srcs_v3"
#define CCXDP_MAP_SOURCE_EPOCH "ccxdp_sepoch_v1"
#define CCXDP_MAP_PORTS "ccxdp_ports_v1"
#define CCXDP_MAP_HASH_KEY "ccxdp_hkey_v2"
#define CCXDP_MAP_CONFIG "ccxdp_config_v5"
#define CCXDP_MAP_CONFIG_ACTIVE "ccxdp_cact_v1"
#define CCXDP_MAP_EXEMPT "ccxdp_exempt_v1"
#define CCXDP_MAP_EXEMPT_GATE "ccxdp_exgate_v1"
#define CCXDP_MAP_PLAN "ccxdp_plan_v1"
#define CCXDP_MAP_SCRATCH "ccxdp_scratch"

/* Helpers return a verdict or reason (>= 0), or this to let the caller go on. */
#define CCXDP_CONTINUE (-1)

/* What happened to one frame. Exactly one outcome is counted per frame. */
enum ccxdp_outcome {
	CCXDP_OUT_NOT_DNS = 0,   /* not UDP or TCP to a configured DNS port: passed untouched */
	CCXDP_OUT_FRAGMENT = 1,  /* an IP fragment: cannot be judged; passed, or dropped when a
				  * first fragment to a DNS port and `fragments` is drop */
	CCXDP_OUT_NOT_QUERY = 2, /* DNS but not a judged query (response, opcode, qdcount) */
	CCXDP_OUT_MALFORMED = 3, /* a DNS query that does not parse: passed to the resolver */
	CCXDP_OUT_PASSED = 4,    /* judged, no entry matched: passed */
	CCXDP_OUT_BLOCKED = 5,   /* judged, a block entry decided: dropped or answered here */
	CCXDP_OUT_UNPARSED = 6,  /* headers deeper than parsed (VLAN tags, IPv6 ext): dropped, or
				  * passed when `unparsed` is pass */
	CCXDP_OUT_ALLOWED = 7,   /* judged, an allow entry decided: passed */
	CCXDP_OUT_MONITORED = 8, /* judged, a block entry in monitor mode decided: passed, counted */
	CCXDP_OUT_EXEMPT = 9,    /* from an exempt (opted-out) source: passed, not judged */
	CCXDP_OUT_TCP_OTHER = 10, /* TCP to a DNS port, no query start in the segment (handshake,
				   * ACK, later part of a stream, not parsable): passed */
	CCXDP_OUT_TCP_RETRY = 11, /* over TCP, a tc entry decided: passed, the retry tc asks for */
	CCXDP_OUT_MAX = 12,
};

/* Why a query counted as malformed; counted beside the outcomes at CCXDP_STAT_MALFORMED_BASE. */
enum ccxdp_malformed {
	CCXDP_MAL_HEADER = 0,      /* UDP length too short for a DNS header, or beyond the IP length */
	CCXDP_MAL_TRUNCATED = 1,   /* the question ends before its name, type and class */
	CCXDP_MAL_LABEL_TYPE = 2,  /* compression pointer or reserved label type in the QNAME */
	CCXDP_MAL_NAME_LEN = 3,    /* QNAME longer than 255 bytes */
	CCXDP_MAL_MAX = 4,
};

/* Things that happen beside a frame's outcome; counted at CCXDP_STAT_EVENT_BASE. */
enum ccxdp_event {
	CCXDP_EV_SOURCE_LOST = 0,   /* a blocked query whose source could not be counted (the
				     * per-source map was full) */
	CCXDP_EV_ANSWER_FAILED = 1, /* not answered because the frame could not grow to the
				     * answer's size: dropped instead */
	CCXDP_EV_OUTSIDE_PLAN = 2,  /* a blocked or monitored query from a source outside the
				     * address plan (ccxdp_plan): counted here, never per source */
	CCXDP_EV_FRAGMENT_DROPPED = 3, /* a first fragment to a DNS port, dropped (`fragments`) */
	CCXDP_EV_UNPARSED_DROPPED = 4, /* headers deeper than parsed, dropped (`unparsed`) */
	CCXDP_EV_TCP_CLOSED = 5,    /* a blocked query over TCP: its connection closed (answer.h) */
	CCXDP_EV_NOT_UNICAST = 6,   /* a blocked query to a broadcast or multicast address:
				     * dropped, since an answer must come from a unicast address */
	CCXDP_EV_MAX = 7,
};

/* What an entry does to a query it decides (RPZ's vocabulary). */
enum ccxdp_action {
	CCXDP_ACTION_DEFAULT = 0,  /* the configured default action (ccxdp_config) */
	CCXDP_ACTION_DROP = 1,     /* silent drop */
	CCXDP_ACTION_NXDOMAIN = 2, /* NXDOMAIN with an SOA, answered here */
	CCXDP_ACTION_NODATA = 3,   /* NOERROR, no answer, with an SOA */
	CCXDP_ACTION_SINKHOLE = 4, /* A/AAAA: the sinkhole address; other types: NODATA */
	CCXDP_ACTION_TC = 5,       /* empty answer with TC set: the client retries over TCP */
	CCXDP_ACTION_REFUSED = 6,  /* REFUSED */
	CCXDP_ACTION_MONITOR = 7,  /* passed to the resolver, counted as a hit */
	CCXDP_ACTION_ALLOW = 8,    /* an allow entry: passed, not counted */
	CCXDP_ACTION_MAX = 9,
};

/* Layout of the per-CPU stats array: the outcomes, the malformed reasons, the events, then
 * how many queries each action was applied to. */
#define CCXDP_STAT_MALFORMED_BASE CCXDP_OUT_MAX
#define CCXDP_STAT_EVENT_BASE (CCXDP_OUT_MAX + CCXDP_MAL_MAX)
#define CCXDP_STAT_ACTION_BASE (CCXDP_OUT_MAX + CCXDP_MAL_MAX + CCXDP_EV_MAX)
#define CCXDP_STAT_MAX (CCXDP_OUT_MAX + CCXDP_MAL_MAX + CCXDP_EV_MAX + CCXDP_ACTION_MAX)

/* Run-time settings, the one entry of ccxdp_config: changed without reloading the program. */
struct ccxdp_config {
	__u8 default_action;  /* enum ccxdp_action for entries whose action is DEFAULT */
	__u8 source_prefix_v6; /* IPv6 sources are counted per prefix of this length (1-128) */
	__be16 edns_udp_size; /* UDP payload size in the OPT of answers (network order) */
	__be32 answer_ttl;    /* TTL of sinkhole A/AAAA records (network order) */
	__be32 negative_ttl;  /* TTL and MINIMUM of the SOA in negative answers (network order) */
	__u8 sinkhole_v4[4];  /* network order */
	__u8 sinkhole_v6[16]; /* network order */
	__u8 pass_unjudged;   /* CCXDP_PASS_*: which frames that cannot be judged pass; 0 drops
			       * them all, so a config never written drops them */
	__u8 pad[3];
};

/* Bits of ccxdp_config.pass_unjudged. */
#define CCXDP_PASS_FRAGMENTS 0x01 /* first fragments to a DNS port pass (else dropped) */
#define CCXDP_PASS_UNPARSED 0x02  /* frames with headers deeper than parsed pass (else dropped) */

/* Key of ccxdp_exempt, an LPM trie of opted-out source prefixes. IPv4 prefixes are stored
 * IPv4-mapped, their length plus 96, like the per-source key. Value: a __u8, 1. */
struct ccxdp_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Name entry flags. An entry applies to the name itself ("self") unless NOT_SELF, and to the
 * names below it only with SUBTREE. */
#define CCXDP_ENTRY_SUBTREE 0x01     /* also matches every name below the name */
#define CCXDP_ENTRY_ALLOW_NAME 0x02  /* the name itself is allowed (an exact allow entry on a
				      * blocked name or subtree) */
#define CCXDP_ENTRY_NOT_SELF 0x04    /* the name itself is not matched (RPZ "*.name" alone) */
#define CCXDP_ENTRY_ALLOW_BELOW 0x08 /* the names below are allowed (an allow entry for what
				      * lies below a blocked name) */

/* The action, flags and category of one listed name. */
struct ccxdp_entry {
	__u8 action;     /* enum ccxdp_action */
	__u8 flags;      /* CCXDP_ENTRY_* */
	__u16 category;  /* small id of a malware family or feed; 0 = none */
};

/*
 * One bucket of the name table (maps.h): one 64-byte cache line holding up to
 * CCXDP_NAME_BUCKET_SLOTS names. Slot i holds the low 48 bits of a name's keyed hash (tag_lo,
 * tag_hi) and its entry (what: action | flags << 4; category). A name's first bucket is
 * given by the top 32 bits of its hash (bucket_of in dns.h), so with at least 2^16 buckets
 * the bucket and the 48 bits together determine all 64 bits: the comparison is the full
 * hash's. Slots [0, CCXDP_NB_PRIMARY(meta)) hold names whose first bucket this is; slots
 * from there to CCXDP_NB_USED(meta) hold names whose first bucket was full, placed in their
 * second bucket. CCXDP_NB_SPILLED says some name of this first bucket lives in its second
 * bucket, the only case in which a lookup reads a second line.
 */
#define CCXDP_NAME_BUCKET_SLOTS 7
struct ccxdp_name_bucket {
	__u32 tag_lo[CCXDP_NAME_BUCKET_SLOTS];   /* hash bits 0-31 */
	__u16 tag_hi[CCXDP_NAME_BUCKET_SLOTS];   /* hash bits 32-47 */
	__u16 category[CCXDP_NAME_BUCKET_SLOTS]; /* struct ccxdp_entry's category */
	__u8 what[CCXDP_NAME_BUCKET_SLOTS];      /* struct ccxdp_entry's action | flags << 4 */
	__u8 meta;                               /* CCXDP_NB_* */
};
#define CCXDP_NB_USED(meta) ((meta) & 7)
#define CCXDP_NB_PRIMARY(meta) (((meta) >> 3) & 7)
#define CCXDP_NB_SPILLED 0x80

/* The two bits a hash sets in its first bucket's word of the name filter (maps.h). */
#define CCXDP_NAME_FILTER_BITS(hash) ((1ULL << ((hash) & 63)) | (1ULL << (((hash) >> 6) & 63)))

/* The fewest buckets a table has: below 2^16 the bucket and the 48 stored bits no longer
 * determine the whole hash. */
#define CCXDP_NAME_BUCKETS_MIN 65536

/* Entries of ccxdp_nact: the live buffer (the one word a packet reads), then what only the
 * control plane reads: the capacity in names set at first attach and each buffer's count. */
#define CCXDP_NACT_LIVE 0
#define CCXDP_NACT_CAPACITY 1
#define CCXDP_NACT_COUNT 2 /* + buffer */
#define CCXDP_NACT_ENTRIES 4

/* Per-source key: IPv4 sources are stored IPv4-mapped (::ffff:a.b.c.d), so one form serves
 * both families. IPv6 sources are kept per prefix (a subscriber's delegation, the setting
 * source_prefix_v6): the address with the bits past prefix_len cleared, so that rotating
 * privacy addresses of one line make one entry. Hits are kept per category so records can
 * name the families a line touched, and per collection buffer: the low bit of the epoch
 * (ccxdp_sepoch) when the hit came. */
struct ccxdp_source_key {
	__u8 addr[16];   /* network byte order */
	__u16 category;
	__u8 buffer;     /* 0 or 1: epoch & 1 */
	__u8 prefix_len; /* leading bits of addr that name the source: 128 for IPv4 (mapped) */
};

struct ccxdp_source_hits {
	__u64 hits;
	__u64 first_seen_ns; /* bpf_ktime_get_coarse_ns(): CLOCK_MONOTONIC_COARSE */
	__u64 last_seen_ns;
};

/* NH key words: word j (0-7) of a label uses nh[2j], nh[2j+1] for the first sum and
 * nh[2j+4], nh[2j+5] for the second (UMAC's Toeplitz shift), so 2 * 7 + 5 + 1 words. */
#define CCXDP_NH_KEY_WORDS 20

/* Key of the name hash (bpf/dns.h); random per installation, written by the control plane
 * from its key file. */
struct ccxdp_hash_key {
	__u64 k0; /* the root's state */
	__u64 k1; /* xored into each suffix's state to give its map key */
	__u32 nh[CCXDP_NH_KEY_WORDS];
};

/*
 * The exempt gate's index of a source (ccxdp_exgate, maps.h): 16 bits of the address that
 * tell subscriber lines apart, the low half of an IPv4 address (a line has one address, and
 * the top half is shared by whole pools), bits 32-47 of an IPv6 one (ISPs hand out /48 to /64
 * from a /32 or wider). ccxdp/policy/exempt.py computes the same indexes for each prefix.
 */
#define CCXDP_EXEMPT_GATE_BITS 16
#define CCXDP_EXEMPT_GATE_V4_BYTE 2 /* the IPv4 index is bytes 2 and 3 of the address */
#define CCXDP_EXEMPT_GATE_V6_BYTE 4 /* the IPv6 index is bytes 4 and 5 */

#endif /* CCXDP_SHARED_H */
