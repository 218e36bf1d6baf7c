/*
 * loadgen: WebSocket load generator for wshub's benchmark (bench/README.md).
 *
 * One thread, edge-triggered epoll, non-blocking sockets, zlib for
 * permessage-deflate.  Runs one mode for a bounded time, then prints exactly
 * one JSON line of results on stdout (idle mode prints a "ready" line first).
 *
 *   loadgen --mode echo --port P -c 100 --size 32 --type text --depth 8
 *   loadgen --mode deflate --port P -c 20 --size 4096 --depth 4
 *   loadgen --mode handshake --port P -c 16
 *   loadgen --mode idle --port P -c 5000 --hold 30
 *   loadgen --mode broadcast --port P1,P2 -c 500 --size 64 --window 8
 *   loadgen --mode topics --port P1,P2 -c 5000 --topics 100 --size 64 --window 100
 *
 * What it checks: status 101, Upgrade, Connection and Sec-WebSocket-Accept;
 * server frames unmasked, no RSV2/RSV3, RSV1 only on the first frame of a
 * message and only with negotiated deflate, control frames short and
 * unfragmented, continuations in order; echoes byte-identical, in order and
 * of the same type.  Every client frame has a fresh random masking key.
 * Messages carry their sequence number as 16 hex digits in front.
 *
 * Topics mode speaks the wshub.v1 subprotocol (docs/protocol.md): every
 * connection offers it, each subscriber sends one JSON "subscribe", the
 * publisher sends "publish" requests and the subscribers check the
 * "message" envelopes (topic, order, content).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

/* ------------------------------------------------------------------ */
/* options and counters                                                 */

enum mode { M_ECHO, M_DEFLATE, M_HANDSHAKE, M_IDLE, M_BROADCAST, M_TOPICS };

static struct {
    enum mode mode;
    int ports[16];
    int nports;
    int conns;
    size_t size;
    int binary;
    int depth;
    int window;
    int in_flight; /* echo: messages in flight over all connections (0: depth each) */
    double warmup, duration, hold, connect_timeout;
    int concurrency;
    int npre;
    int topics;
} opt = {
    .mode = M_ECHO, .nports = 0, .conns = 1, .size = 32, .binary = 0,
    .depth = 1, .window = 8, .warmup = 1.0, .duration = 3.0, .hold = 30.0,
    .connect_timeout = 15.0, .concurrency = 64, .npre = 256, .topics = 100,
};

static struct {
    uint64_t conn_failed, handshake_failed, mismatches, proto_errors;
    uint64_t closed_by_server, lost, dup, deflate_refused;
    uint64_t unclean_close, close_timeouts, stalled;
    uint64_t sent, received, bytes, completed, cross;
    uint64_t compressed; /* messages that arrived with RSV1 (deflated) */
} st;

static volatile sig_atomic_t stop_signal;

/* ------------------------------------------------------------------ */
/* time, random numbers                                                 */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t rng_s[2];

static uint64_t rng_next(void) /* xorshift128+ */
{
    uint64_t a = rng_s[0];
    const uint64_t b = rng_s[1];
    rng_s[0] = b;
    a ^= a << 23;
    rng_s[1] = a ^ b ^ (a >> 17) ^ (b >> 26);
    return rng_s[1] + b;
}

static void rng_seed(void)
{
    if (getrandom(rng_s, sizeof rng_s, 0) != sizeof rng_s) {
        rng_s[0] = now_ns() | 1;
        rng_s[1] = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
    }
}

static double cpu_seconds(double *user)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double u = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    double s = ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    if (user)
        *user = u;
    return u + s;
}

/* ------------------------------------------------------------------ */
/* SHA-1 and base64, for Sec-WebSocket-Accept                           */

static uint32_t rol32(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void sha1_block(uint32_t h[5], const uint8_t *p)
{
    uint32_t w[80];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
               (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 80; i++)
        w[i] = rol32(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5A827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ED9EBA1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8F1BBCDC;
        } else {
            f = b ^ c ^ d;
            k = 0xCA62C1D6;
        }
        uint32_t t = rol32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

static void sha1(const uint8_t *data, size_t n, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t blk[64];
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        sha1_block(h, data + i);
    size_t rest = n - i;
    memset(blk, 0, sizeof blk);
    memcpy(blk, data + i, rest);
    blk[rest] = 0x80;
    if (rest >= 56) {
        sha1_block(h, blk);
        memset(blk, 0, sizeof blk);
    }
    uint64_t bits = (uint64_t)n * 8;
    for (int j = 0; j < 8; j++)
        blk[63 - j] = (uint8_t)(bits >> (8 * j));
    sha1_block(h, blk);
    for (int j = 0; j < 5; j++) {
        out[4 * j] = (uint8_t)(h[j] >> 24);
        out[4 * j + 1] = (uint8_t)(h[j] >> 16);
        out[4 * j + 2] = (uint8_t)(h[j] >> 8);
        out[4 * j + 3] = (uint8_t)h[j];
    }
}

static void base64(const uint8_t *in, size_t n, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    char *o = out;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = tab[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = tab[v >> 18];
        *o++ = tab[(v >> 12) & 63];
        *o++ = tab[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = 0;
}

/* ------------------------------------------------------------------ */
/* latency histogram: 32 sub-buckets per power of two (~3 % precision)  */

#define HSUB_BITS 5
#define HSUB (1 << HSUB_BITS)
#define HBUCKETS (64 * HSUB)

static uint64_t hist[HBUCKETS];
static uint64_t hist_n, hist_max;

static int hist_index(uint64_t v)
{
    if (v < HSUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v);
    int shift = e - HSUB_BITS;
    return (e - HSUB_BITS + 1) * HSUB + (int)((v >> shift) - HSUB);
}

static uint64_t hist_value(int i) /* upper edge of bucket i */
{
    if (i < HSUB)
        return (uint64_t)i;
    int e = i / HSUB + HSUB_BITS - 1;
    int shift = e - HSUB_BITS;
    uint64_t lo = ((uint64_t)(i % HSUB) + HSUB) << shift;
    return lo + ((uint64_t)1 << shift) - 1;
}

static void hist_add(uint64_t us)
{
    hist[hist_index(us)]++;
    hist_n++;
    if (us > hist_max)
        hist_max = us;
}

static uint64_t hist_pct(double p)
{
    if (!hist_n)
        return 0;
    uint64_t want = (uint64_t)(p * (double)hist_n);
    if (want >= hist_n)
        want = hist_n - 1;
    uint64_t acc = 0;
    for (int i = 0; i < HBUCKETS; i++) {
        acc += hist[i];
        if (acc > want) {
            uint64_t v = hist_value(i);
            return v < hist_max ? v : hist_max;
        }
    }
    return hist_max;
}

/* ------------------------------------------------------------------ */
/* buffers and masking                                                  */

struct buf {
    uint8_t *p;
    size_t off, len, cap;
};

static void buf_reserve(struct buf *b, size_t extra)
{
    if (b->off && (b->cap - b->len < extra || b->off == b->len)) {
        memmove(b->p, b->p + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->cap - b->len >= extra)
        return;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < extra)
        cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        fprintf(stderr, "loadgen: out of memory\n");
        exit(2);
    }
    b->p = p;
    b->cap = cap;
}

/* dst[i] = src[i] ^ key[(pos + i) % 4] */
static void mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4],
                      size_t pos)
{
    uint8_t r[8];
    for (int i = 0; i < 8; i++)
        r[i] = key[(pos + (size_t)i) & 3];
    uint64_t k8;
    memcpy(&k8, r, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= k8;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ r[i & 7];
}

/* ------------------------------------------------------------------ */
/* payloads                                                             */

static uint8_t *tmpl;            /* echo/broadcast body; bytes 0..15 replaced by the seq */
static uint8_t **pre_plain;      /* deflate mode: plaintexts */
static uint8_t **pre_comp;       /* deflate mode: raw deflate, without 00 00 ff ff */
static size_t *pre_comp_len;
static uint8_t *scratch;         /* inflate output */
static size_t scratch_cap;
static z_stream infl;

static void put_hex16(uint8_t *d, uint64_t v)
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--) {
        d[i] = (uint8_t)hx[v & 15];
        v >>= 4;
    }
}

static int get_hex16(const uint8_t *s, size_t n, uint64_t *out)
{
    if (n < 16)
        return -1;
    uint64_t v = 0;
    for (int i = 0; i < 16; i++) {
        int c = s[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}

static void make_template(void)
{
    size_t n = opt.size < 16 ? 16 : opt.size;
    tmpl = malloc(n);
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rng_next();
        if (opt.mode == M_TOPICS) /* carried in a JSON string: nothing to escape */
            tmpl[i] = (uint8_t)"abcdefghijklmnopqrstuvwxyz0123456789"[r % 36];
        else
            tmpl[i] = opt.binary ? (uint8_t)r : (uint8_t)(' ' + 1 + r % 94);
    }
}

/* JSON-like text messages, compressed once each without context takeover */
static void make_deflate_payloads(void)
{
    static const char *names[] = {"alpha", "bravo", "charlie", "delta", "echo", "foxtrot",
                                  "golf", "hotel", "india", "juliet", "kilo", "lima"};
    pre_plain = calloc((size_t)opt.npre, sizeof *pre_plain);
    pre_comp = calloc((size_t)opt.npre, sizeof *pre_comp);
    pre_comp_len = calloc((size_t)opt.npre, sizeof *pre_comp_len);
    size_t n = opt.size < 64 ? 64 : opt.size;
    opt.size = n;
    char *t = malloc(n + 512);
    for (int m = 0; m < opt.npre; m++) {
        size_t len = (size_t)snprintf(t, n + 512, "%016x{\"msg\":%d,\"events\":[", m, m);
        int k = 0;
        while (len < n) {
            uint64_t r = rng_next();
            len += (size_t)snprintf(
                t + len, n + 512 - len,
                "%s{\"id\":%d,\"user\":\"%s_%u\",\"score\":%u.%02u,\"active\":%s,"
                "\"tags\":[\"%s\",\"%s\"]}",
                k ? "," : "", k, names[r % 12], (unsigned)(r >> 8) % 1000,
                (unsigned)(r >> 20) % 10000, (unsigned)(r >> 40) % 100,
                (r >> 50) & 1 ? "true" : "false", names[(r >> 54) % 12], names[(r >> 58) % 12]);
            k++;
        }
        /* cut to exactly n bytes and close it like JSON would end */
        memcpy(t + n - 3, "]}\n", 3);
        pre_plain[m] = malloc(n);
        memcpy(pre_plain[m], t, n);

        z_stream zs;
        memset(&zs, 0, sizeof zs);
        if (deflateInit2(&zs, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            exit(2);
        size_t cap = deflateBound(&zs, n) + 16;
        pre_comp[m] = malloc(cap);
        zs.next_in = pre_plain[m];
        zs.avail_in = (uInt)n;
        zs.next_out = pre_comp[m];
        zs.avail_out = (uInt)cap;
        if (deflate(&zs, Z_SYNC_FLUSH) != Z_OK || zs.avail_in) {
            fprintf(stderr, "loadgen: deflate failed\n");
            exit(2);
        }
        size_t clen = cap - zs.avail_out;
        if (clen >= 4 && !memcmp(pre_comp[m] + clen - 4, "\x00\x00\xff\xff", 4))
            clen -= 4;
        pre_comp_len[m] = clen;
        deflateEnd(&zs);
    }
    free(t);
}

/* ------------------------------------------------------------------ */
/* connections                                                          */

enum cstate { C_FREE, C_CONNECTING, C_UPGRADING, C_OPEN, C_CLOSING, C_WAIT_FIN, C_DEAD };
enum role { R_ECHO, R_SENDER, R_RECEIVER, R_IDLE, R_CYCLE };

struct conn {
    int fd, id, port;
    enum cstate state;
    enum role role;
    struct buf in, out;
    char accept[32];
    int deflate;          /* negotiated */
    uint64_t next_seq;    /* next to send (echo) */
    uint64_t expect_seq;  /* next expected (echo, receiver) */
    uint64_t *sent_at;    /* echo: send time of seq % depth */
    uint8_t *frag;        /* message assembly for fragmented messages */
    size_t frag_len, frag_cap;
    int frag_op, frag_rsv1, in_frag;
    uint64_t t_start, t_close;
    int want_out;
    int topic;            /* topics: the subscriber's topic (index) */
    int subscribed;       /* topics: its "subscribed" answer came */
};

static struct conn *conns;
static int nconns;
static int epfd;
static int opened, connecting, dead;
static uint64_t t_begin, t_open_all, t_measure, t_end;
static int measuring, finished;
static double cpu_at_measure, user_at_measure;
static double cpu_total, user_total;
static int deflate_negotiated;
static int receivers_open;

/* broadcast state */
static uint64_t b_next, b_oldest;
static uint64_t *b_sent_at;
static int *b_remaining;
static int b_nrecv, b_synced;
static uint64_t b_sync_id, b_last_sync, b_last_progress;
static int b_sync_seen[64];

/* topics state (with the broadcast state above: window, sync) */
static int *t_count;     /* subscribed receivers per topic */
static int t_subscribed; /* receivers whose subscription was answered */
static int t_error_shown;

static void conn_start(struct conn *c);
static void conn_kill(struct conn *c, int counted_as_open);

static void queue_frame(struct conn *c, int op, int rsv1, const uint8_t *hdr16,
                        const uint8_t *body, size_t n)
{
    /* payload = hdr16 (if any, 16 bytes) + body[hdr16 ? 16 : 0 .. n) */
    uint8_t h[14];
    size_t hl = 2;
    h[0] = (uint8_t)(0x80 | (rsv1 ? 0x40 : 0) | op);
    if (n < 126) {
        h[1] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        hl = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    uint32_t key32 = (uint32_t)rng_next();
    memcpy(h + hl, &key32, 4);
    const uint8_t *key = h + hl;
    hl += 4;
    buf_reserve(&c->out, hl + n);
    uint8_t *d = c->out.p + c->out.len;
    memcpy(d, h, hl);
    d += hl;
    size_t skip = 0;
    if (hdr16 && n >= 16) {
        mask_copy(d, hdr16, 16, key, 0);
        skip = 16;
    }
    mask_copy(d + skip, body + skip, n - skip, key, skip);
    c->out.len += hl + n;
}

static void flush_out(struct conn *c)
{
    while (c->out.off < c->out.len) {
        ssize_t w = write(c->fd, c->out.p + c->out.off, c->out.len - c->out.off);
        if (w > 0) {
            c->out.off += (size_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->want_out = 1;
            return;
        } else {
            if (!finished && c->state != C_WAIT_FIN && c->state != C_CLOSING)
                st.closed_by_server++;
            conn_kill(c, c->state >= C_OPEN);
            return;
        }
    }
    c->out.off = c->out.len = 0;
    c->want_out = 0;
}

/* echo with --in-flight N: connections take turns for N messages in flight
   in all; each has a slot in this ring for every message it may still send
   (at most depth), the one that waited longest goes first */
static int *turns;
static size_t turns_head, turns_len, turns_cap;
static long echo_in_flight;

/* echo: send message seq (keeps depth in flight) */
static void echo_send(struct conn *c, uint64_t now)
{
    uint64_t seq = c->next_seq++;
    echo_in_flight++;
    c->sent_at[seq % (uint64_t)opt.depth] = now;
    if (opt.mode == M_DEFLATE) {
        int m = (int)(seq % (uint64_t)opt.npre);
        queue_frame(c, 1, 1, NULL, pre_comp[m], pre_comp_len[m]);
    } else {
        uint8_t h[16];
        put_hex16(h, seq);
        queue_frame(c, opt.binary ? 2 : 1, 0, h, tmpl, opt.size);
    }
    if (measuring)
        st.sent++;
}

static void bcast_send(uint64_t now);

static void on_open(struct conn *c, uint64_t now)
{
    c->state = C_OPEN;
    opened++;
    connecting--;
    if (c->deflate)
        deflate_negotiated++;
    if (c->role == R_ECHO) {
        /* echo_start() sends the first messages once every connection is
           open: 1,000 connections with 1 MiB in flight each would slow the
           opening of the rest past the connect timeout */
    } else if (c->role == R_RECEIVER) {
        receivers_open++;
        if (opt.mode == M_TOPICS) {
            char m[64];
            int n = snprintf(m, sizeof m, "{\"type\":\"subscribe\",\"topic\":\"t%d\"}", c->topic);
            queue_frame(c, 1, 0, NULL, (const uint8_t *)m, (size_t)n);
        }
    } else if (c->role == R_CYCLE) {
        static const uint8_t close_payload[2] = {0x03, 0xe8}; /* 1000 */
        queue_frame(c, 8, 0, NULL, close_payload, 2);
        c->state = C_CLOSING;
    }
}

static void turn_wait(struct conn *c)
{
    if (turns_len < turns_cap)
        turns[(turns_head + turns_len++) % turns_cap] = (int)(c - conns);
}

/* --in-flight: send for the connections whose turn it is, while below N */
static void turns_take(struct conn *self, uint64_t now)
{
    while (turns_len && echo_in_flight < opt.in_flight && !finished) {
        struct conn *c = &conns[turns[turns_head]];
        turns_head = (turns_head + 1) % turns_cap;
        turns_len--;
        if (c->state != C_OPEN)
            continue;
        echo_send(c, now);
        if (c != self) /* self writes at the end of its event */
            flush_out(c);
    }
}

/* echo, deflate: every open connection puts its first depth messages in
   flight (--in-flight: as many as that allows, in turn) */
static void echo_start(uint64_t now)
{
    for (int k = 0; k < opt.depth; k++) {
        for (int i = 0; i < nconns; i++) {
            struct conn *c = &conns[i];
            if (c->state != C_OPEN || c->role != R_ECHO)
                continue;
            if (opt.in_flight)
                turn_wait(c);
            else
                echo_send(c, now);
        }
    }
    if (opt.in_flight)
        turns_take(NULL, now);
    for (int i = 0; i < nconns; i++)
        if (conns[i].state == C_OPEN && conns[i].out.len > conns[i].out.off)
            flush_out(&conns[i]);
}

/* ---- HTTP upgrade ---- */

static void send_upgrade(struct conn *c)
{
    uint8_t raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rng_next();
        memcpy(raw + i, &r, 8);
    }
    char key[32];
    base64(raw, 16, key);
    char cat[64];
    int kl = snprintf(cat, sizeof cat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    uint8_t dig[20];
    sha1((uint8_t *)cat, (size_t)kl, dig);
    base64(dig, 20, c->accept);
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET / HTTP/1.1\r\n"
                     "Host: 127.0.0.1:%d\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "Origin: http://127.0.0.1:%d\r\n"
                     "%s"
                     "\r\n",
                     c->port, key, c->port,
                     opt.mode == M_DEFLATE
                         ? "Sec-WebSocket-Extensions: permessage-deflate; "
                           "client_no_context_takeover; server_no_context_takeover\r\n"
                     : opt.mode == M_TOPICS ? "Sec-WebSocket-Protocol: wshub.v1\r\n"
                                            : "");
    buf_reserve(&c->out, (size_t)n);
    memcpy(c->out.p + c->out.len, req, (size_t)n);
    c->out.len += (size_t)n;
    c->state = C_UPGRADING;
    flush_out(c);
}

static int token_in(const char *value, const char *token)
{
    /* comma-separated, case-insensitive */
    size_t tl = strlen(token);
    const char *p = value;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *s = p;
        while (*p && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if ((size_t)(e - s) == tl && !strncasecmp(s, token, tl))
            return 1;
    }
    return 0;
}

/* returns 1 if the upgrade response is complete and valid, 0 if incomplete, -1 on failure */
static int parse_upgrade_response(struct conn *c)
{
    uint8_t *start = c->in.p + c->in.off;
    size_t avail = c->in.len - c->in.off;
    uint8_t *end = memmem(start, avail, "\r\n\r\n", 4);
    if (!end) {
        if (avail > 16384)
            return -1;
        return 0;
    }
    size_t hlen = (size_t)(end - start) + 4;
    char *h = malloc(hlen + 1);
    memcpy(h, start, hlen);
    h[hlen] = 0;
    c->in.off += hlen;
    int ok_status = !strncmp(h, "HTTP/1.1 101", 12);
    int ok_upgrade = 0, ok_conn = 0, ok_accept = 0, ext = 0, snct = 0, bad_ext = 0;
    int ok_proto = opt.mode != M_TOPICS;
    char *save = NULL;
    char *line = strtok_r(h, "\r\n", &save);
    for (line = strtok_r(NULL, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        char *colon = strchr(line, ':');
        if (!colon)
            continue;
        *colon = 0;
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *ve = v + strlen(v);
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            *--ve = 0;
        if (!strcasecmp(line, "upgrade"))
            ok_upgrade = token_in(v, "websocket");
        else if (!strcasecmp(line, "connection"))
            ok_conn = token_in(v, "upgrade");
        else if (!strcasecmp(line, "sec-websocket-accept"))
            ok_accept = !strcmp(v, c->accept);
        else if (!strcasecmp(line, "sec-websocket-protocol"))
            ok_proto = opt.mode == M_TOPICS && !strcmp(v, "wshub.v1");
        else if (!strcasecmp(line, "sec-websocket-extensions")) {
            /* permessage-deflate; params... */
            char *p = v, *sv2 = NULL;
            char *tok = strtok_r(p, ";", &sv2);
            int first = 1;
            for (; tok; tok = strtok_r(NULL, ";", &sv2)) {
                while (*tok == ' ' || *tok == '\t')
                    tok++;
                char *te = tok + strlen(tok);
                while (te > tok && (te[-1] == ' ' || te[-1] == '\t'))
                    *--te = 0;
                if (first) {
                    if (strcasecmp(tok, "permessage-deflate") || opt.mode != M_DEFLATE)
                        bad_ext = 1;
                    ext = 1;
                    first = 0;
                } else if (!strcasecmp(tok, "server_no_context_takeover")) {
                    snct = 1;
                } else if (!strcasecmp(tok, "client_no_context_takeover")) {
                    /* fine: we never keep a context */
                } else if (!strncasecmp(tok, "server_max_window_bits", 22) ||
                           !strncasecmp(tok, "client_max_window_bits", 22)) {
                    /* inflate with 15 bits reads any window; our messages fit any */
                } else {
                    bad_ext = 1;
                }
            }
        }
    }
    free(h);
    if (!ok_status || !ok_upgrade || !ok_conn || !ok_accept || bad_ext || !ok_proto) {
        if (!ok_proto && ok_status && !t_error_shown++)
            fprintf(stderr, "loadgen: the server did not answer Sec-WebSocket-Protocol: wshub.v1\n");
        st.handshake_failed++;
        return -1;
    }
    if (opt.mode == M_DEFLATE) {
        if (!ext || !snct) {
            /* refused, or cannot honour server_no_context_takeover */
            st.deflate_refused++;
            return -1;
        }
        c->deflate = 1;
    }
    return 1;
}

/* ---- messages ---- */

static void bcast_complete_check(uint64_t now);

/* the string value of "key" in a flat JSON object without escapes; NULL if absent */
static const uint8_t *json_str(const uint8_t *d, size_t n, const char *key, size_t *len)
{
    char pat[32];
    int pl = snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const uint8_t *v = memmem(d, n, pat, (size_t)pl);
    if (!v)
        return NULL;
    v += pl;
    const uint8_t *e = memchr(v, '"', n - (size_t)(v - d));
    if (!e)
        return NULL;
    *len = (size_t)(e - v);
    return v;
}

static int str_is(const uint8_t *v, size_t n, const char *s)
{
    return v && n == strlen(s) && !memcmp(v, s, n);
}

/* broadcast, topics: receiver c got message seq; it expects every stride-th
   (broadcast 1, topics T) and counts the ones skipped as lost */
static void receiver_got(struct conn *c, uint64_t seq, uint64_t stride, size_t bytes,
                         uint64_t now)
{
    if (seq < c->expect_seq || seq >= b_next) {
        st.dup++;
        return;
    }
    for (uint64_t s = c->expect_seq; s < seq; s += stride) {
        st.lost++;
        if (s >= b_oldest)
            b_remaining[s % (uint64_t)opt.window]--;
    }
    c->expect_seq = seq + stride;
    if (seq >= b_oldest)
        b_remaining[seq % (uint64_t)opt.window]--;
    if (measuring) {
        st.received++;
        st.bytes += bytes;
        if (c->port != opt.ports[0])
            st.cross++;
        hist_add((now - b_sent_at[seq % (uint64_t)opt.window]) / 1000);
    }
}

/* topics mode: one wshub.v1 message from the server */
static void topics_message(struct conn *c, int op, const uint8_t *data, size_t n, uint64_t now)
{
    size_t tl = 0, dl = 0, pl = 0;
    const uint8_t *type = data && op == 1 ? json_str(data, n, "type", &tl) : NULL;
    if (!type) {
        st.mismatches++;
        return;
    }
    if (str_is(type, tl, "error")) {
        st.proto_errors++;
        if (!t_error_shown++)
            fprintf(stderr, "loadgen: the server answered %.*s\n", (int)(n < 300 ? n : 300),
                    (const char *)data);
        return;
    }
    if (c->role != R_RECEIVER)
        return; /* the publisher's answers: none asked for */
    if (str_is(type, tl, "subscribed")) {
        if (!c->subscribed) {
            c->subscribed = 1;
            t_count[c->topic]++;
            t_subscribed++;
        }
        return;
    }
    if (str_is(type, tl, "gap")) {
        st.lost++; /* the server says it lost some: never expected here */
        return;
    }
    if (!str_is(type, tl, "message"))
        return; /* welcome and other types: not ours to check */
    char want_topic[16];
    snprintf(want_topic, sizeof want_topic, "t%d", c->topic);
    const uint8_t *topic = json_str(data, n, "topic", &pl);
    const uint8_t *d = json_str(data, n, "data", &dl);
    if (!str_is(topic, pl, want_topic) || !d) {
        st.mismatches++;
        return;
    }
    if (dl && d[0] == 'S') { /* sync publication "S<id>" */
        char num[24];
        size_t k = dl - 1 < sizeof num - 1 ? dl - 1 : sizeof num - 1;
        memcpy(num, d + 1, k);
        num[k] = 0;
        uint64_t id = strtoull(num, NULL, 10);
        if (!b_synced && id + 64 > b_sync_id && id <= b_sync_id)
            b_sync_seen[id % 64]++;
        return;
    }
    uint64_t seq;
    uint64_t T = (uint64_t)opt.topics;
    if (dl != opt.size || get_hex16(d, dl, &seq) || memcmp(d + 16, tmpl + 16, dl - 16) ||
        seq % T != (uint64_t)c->topic) {
        st.mismatches++;
        return;
    }
    receiver_got(c, seq, T, dl, now);
}

static void on_message(struct conn *c, int op, int compressed, const uint8_t *data, size_t n,
                       uint64_t now)
{
    if (compressed) {
        st.compressed++;
        if (inflateReset(&infl) != Z_OK) {
            st.proto_errors++;
            return;
        }
        static const uint8_t tail[4] = {0, 0, 0xff, 0xff};
        infl.next_in = (Bytef *)data;
        infl.avail_in = (uInt)n;
        infl.next_out = scratch;
        infl.avail_out = (uInt)scratch_cap;
        int r = inflate(&infl, Z_SYNC_FLUSH);
        if (r == Z_OK || r == Z_BUF_ERROR || r == Z_STREAM_END) {
            if (infl.avail_in == 0 && r != Z_STREAM_END) {
                infl.next_in = (Bytef *)tail;
                infl.avail_in = 4;
                r = inflate(&infl, Z_SYNC_FLUSH);
            }
        }
        if ((r != Z_OK && r != Z_BUF_ERROR && r != Z_STREAM_END) || infl.avail_out == 0) {
            /* corrupt, or longer than anything we sent */
            st.mismatches++;
            data = NULL;
            n = 0;
        } else {
            data = scratch;
            n = scratch_cap - infl.avail_out;
        }
    }
    if (opt.mode == M_TOPICS) {
        topics_message(c, op, data, n, now);
        return;
    }
    if (c->role == R_ECHO) {
        uint64_t seq = c->expect_seq;
        if (seq >= c->next_seq) {
            st.dup++; /* more echoes than messages sent */
            return;
        }
        int ok;
        const uint8_t *want;
        int want_op = opt.mode == M_DEFLATE ? 1 : (opt.binary ? 2 : 1);
        if (opt.mode == M_DEFLATE) {
            want = pre_plain[seq % (uint64_t)opt.npre];
            ok = data && op == want_op && n == opt.size && !memcmp(data, want, n);
        } else {
            uint8_t h[16];
            put_hex16(h, seq);
            ok = data && op == want_op && n == opt.size && !memcmp(data, h, 16) &&
                 !memcmp(data + 16, tmpl + 16, n - 16);
            if (!ok && data) {
                /* a later message: the ones in between were dropped */
                uint64_t got;
                if (get_hex16(data, n, &got) == 0 && got > seq && got < c->next_seq &&
                    op == want_op && n == opt.size && !memcmp(data + 16, tmpl + 16, n - 16)) {
                    st.lost += got - seq;
                    for (uint64_t s = seq; s < got; s++)
                        echo_send(c, now); /* keep depth in flight */
                    seq = c->expect_seq = got;
                    ok = 1;
                }
            }
        }
        if (!ok)
            st.mismatches++;
        c->expect_seq = seq + 1;
        if (measuring) {
            st.received++;
            st.bytes += opt.size;
            uint64_t t0 = c->sent_at[seq % (uint64_t)opt.depth];
            hist_add((now - t0) / 1000);
        }
        echo_in_flight--;
        if (finished) {
        } else if (opt.in_flight) {
            turn_wait(c);
            turns_take(c, now);
        } else {
            echo_send(c, now);
        }
    } else if (c->role == R_RECEIVER) {
        if (!data || n < 1)
            return;
        if (data[0] == 'S') { /* sync message "S<id>" */
            uint64_t id = strtoull((const char *)data + 1, NULL, 10);
            if (!b_synced && id + 64 > b_sync_id && id <= b_sync_id)
                b_sync_seen[id % 64]++;
            return;
        }
        uint64_t seq;
        if (op != 1 || n != opt.size || get_hex16(data, n, &seq) ||
            memcmp(data + 16, tmpl + 16, n - 16)) {
            st.mismatches++;
            return;
        }
        receiver_got(c, seq, 1, n, now);
    }
    /* sender's own copies and idle connections: ignored */
}

static void send_control(struct conn *c, int op, const uint8_t *p, size_t n)
{
    queue_frame(c, op, 0, NULL, p, n);
}

/* parse complete frames in c->in; returns -1 when the connection failed */
static int parse_frames(struct conn *c, uint64_t now)
{
    for (;;) {
        uint8_t *p = c->in.p + c->in.off;
        size_t avail = c->in.len - c->in.off;
        if (avail < 2)
            break;
        int fin = p[0] & 0x80, rsv1 = p[0] & 0x40, rsv23 = p[0] & 0x30, op = p[0] & 0x0f;
        int masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (avail < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            hl = 4;
        } else if (len == 127) {
            if (avail < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            hl = 10;
        }
        if (masked || rsv23 || (op > 2 && op < 8) || op > 10 || len > (1ull << 30)) {
            st.proto_errors++;
            return -1;
        }
        if (op >= 8 && (!fin || len > 125 || rsv1)) {
            st.proto_errors++;
            return -1;
        }
        if (rsv1 && (!c->deflate || op == 0)) {
            st.proto_errors++;
            return -1;
        }
        if (avail < hl + len) {
            /* make room for the whole frame so the next reads can complete it */
            buf_reserve(&c->in, hl + len - avail + 65536);
            break;
        }
        const uint8_t *pl = p + hl;
        c->in.off += hl + (size_t)len;
        if (op == 9) {
            send_control(c, 10, pl, (size_t)len);
        } else if (op == 10) {
            /* pong: ignored */
        } else if (op == 8) {
            if (c->state == C_CLOSING) {
                c->state = C_WAIT_FIN;
                c->t_close = now;
            } else if (!finished) {
                st.closed_by_server++;
                return -1;
            } else {
                return -1;
            }
        } else if (op == 0) {
            if (!c->in_frag) {
                st.proto_errors++;
                return -1;
            }
            if (c->frag_len + len > c->frag_cap) {
                size_t cap = c->frag_cap ? c->frag_cap : 65536;
                while (cap < c->frag_len + len)
                    cap *= 2;
                c->frag = realloc(c->frag, cap);
                c->frag_cap = cap;
            }
            memcpy(c->frag + c->frag_len, pl, (size_t)len);
            c->frag_len += (size_t)len;
            if (fin) {
                c->in_frag = 0;
                on_message(c, c->frag_op, c->frag_rsv1, c->frag, c->frag_len, now);
            }
        } else {
            if (c->in_frag) {
                st.proto_errors++;
                return -1;
            }
            if (fin) {
                on_message(c, op, rsv1, pl, (size_t)len, now);
            } else {
                c->in_frag = 1;
                c->frag_op = op;
                c->frag_rsv1 = rsv1;
                c->frag_len = 0;
                if (len > c->frag_cap) {
                    c->frag = realloc(c->frag, (size_t)len + 65536);
                    c->frag_cap = (size_t)len + 65536;
                }
                memcpy(c->frag, pl, (size_t)len);
                c->frag_len = (size_t)len;
            }
        }
    }
    if (c->in.off == c->in.len)
        c->in.off = c->in.len = 0;
    return 0;
}

/* ---- connection life cycle ---- */

static struct sockaddr_in addr_for(int port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static void conn_reset(struct conn *c)
{
    c->in.off = c->in.len = 0;
    c->out.off = c->out.len = 0;
    c->deflate = 0;
    c->in_frag = 0;
    c->frag_len = 0;
    c->want_out = 0;
    c->next_seq = c->expect_seq = 0;
    if (opt.mode == M_TOPICS)
        c->expect_seq = (uint64_t)c->topic; /* the first publication to topic k is k */
    c->subscribed = 0;
}

static void conn_start(struct conn *c)
{
    conn_reset(c);
    c->t_start = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        st.conn_failed++;
        c->state = C_DEAD;
        dead++;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = addr_for(c->port);
    connecting++;
    c->state = C_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                             .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) == 0) {
        send_upgrade(c);
    } else if (errno != EINPROGRESS) {
        st.conn_failed++;
        conn_kill(c, 0);
    }
}

static void conn_kill(struct conn *c, int counted_as_open)
{
    int was_open = c->state >= C_OPEN && c->state != C_DEAD;
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == C_CONNECTING || c->state == C_UPGRADING)
        connecting--;
    else if (counted_as_open && was_open)
        opened--;
    if (c->role == R_RECEIVER && was_open)
        receivers_open--;
    c->state = C_DEAD;
    dead++;
    if (opt.mode == M_BROADCAST && !finished && c->role == R_RECEIVER && was_open && b_synced) {
        /* its outstanding deliveries will never come: count them as lost */
        for (uint64_t s = c->expect_seq > b_oldest ? c->expect_seq : b_oldest; s < b_next; s++) {
            b_remaining[s % (uint64_t)opt.window]--;
            st.lost++;
        }
        b_nrecv--;
    }
    if (opt.mode == M_TOPICS && c->role == R_RECEIVER && was_open && c->subscribed) {
        t_count[c->topic]--;
        t_subscribed--;
        if (!finished && b_synced) {
            uint64_t T = (uint64_t)opt.topics;
            uint64_t s = c->expect_seq;
            while (s < b_oldest)
                s += T;
            for (; s < b_next; s += T) {
                b_remaining[s % (uint64_t)opt.window]--;
                st.lost++;
            }
            b_nrecv--;
        }
    }
}

/* handshake mode: one cycle done (or failed); start the next */
static void cycle_done(struct conn *c, uint64_t now, int ok)
{
    if (ok && measuring) {
        st.completed++;
        hist_add((now - c->t_start) / 1000);
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    opened--;
    c->state = C_FREE;
    if (!finished)
        conn_start(c);
}

static void on_event(struct conn *c, uint32_t events, uint64_t now)
{
    if (c->state == C_DEAD || c->state == C_FREE)
        return;
    if (c->state == C_CONNECTING) {
        if (!(events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            st.conn_failed++;
            conn_kill(c, 0);
            if (opt.mode == M_HANDSHAKE && !finished) {
                dead--;
                c->state = C_FREE;
                conn_start(c);
            }
            return;
        }
        send_upgrade(c);
        if (c->state == C_DEAD)
            return;
    }
    if ((events & EPOLLOUT) && c->want_out)
        flush_out(c);
    if (c->state == C_DEAD)
        return;
    if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)))
        return;
    int eof = 0;
    for (;;) {
        buf_reserve(&c->in, 16384);
        ssize_t r = read(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len);
        if (r > 0) {
            c->in.len += (size_t)r;
            if (c->state == C_UPGRADING) {
                int u = parse_upgrade_response(c);
                if (u < 0) {
                    conn_kill(c, 0);
                    if (opt.mode == M_HANDSHAKE && !finished) {
                        dead--;
                        c->state = C_FREE;
                        conn_start(c);
                    }
                    return;
                }
                if (u == 0)
                    continue;
                on_open(c, now);
            }
            if (parse_frames(c, now) < 0) {
                conn_kill(c, 1);
                return;
            }
            if (c->out.len - c->out.off >= 262144)
                flush_out(c); /* large echoes: do not wait for EAGAIN to start sending */
            if (c->state == C_DEAD)
                return;
            continue;
        }
        if (r == 0) {
            eof = 1;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        eof = 1; /* ECONNRESET and the like */
        break;
    }
    if (c->out.len > c->out.off)
        flush_out(c);
    if (c->state == C_DEAD)
        return;
    if (opt.mode == M_HANDSHAKE) {
        if (c->state == C_WAIT_FIN && eof) {
            cycle_done(c, now, 1);
            return;
        }
        if (eof) {
            if (c->state == C_CLOSING) {
                st.unclean_close++; /* TCP closed without a Close frame */
                cycle_done(c, now, 1);
            } else {
                st.closed_by_server++;
                conn_kill(c, c->state >= C_OPEN);
                dead--;
                c->state = C_FREE;
                if (!finished)
                    conn_start(c);
            }
        }
        return;
    }
    if (eof) {
        if (!finished)
            st.closed_by_server++;
        conn_kill(c, c->state >= C_OPEN);
    }
    if ((opt.mode == M_BROADCAST || opt.mode == M_TOPICS) && c->role == R_RECEIVER)
        bcast_complete_check(now);
}

/* ---- broadcast ---- */

/* topics: {"type":"publish","topic":"t<k>","data":"<seq in hex><template>"};
   seq == 0 with sync > 0: the sync publication "S<sync>" */
static void topics_publish(struct conn *s, int topic, uint64_t seq)
{
    static uint8_t *m;
    static size_t cap;
    if (cap < opt.size + 128) {
        cap = opt.size + 128;
        m = realloc(m, cap);
    }
    int n = snprintf((char *)m, cap, "{\"type\":\"publish\",\"topic\":\"t%d\",\"data\":\"", topic);
    put_hex16(m + n, seq);
    memcpy(m + n + 16, tmpl + 16, opt.size - 16);
    memcpy(m + n + opt.size, "\"}", 2);
    queue_frame(s, 1, 0, NULL, m, (size_t)n + opt.size + 2);
}

static void bcast_send(uint64_t now)
{
    struct conn *s = &conns[0];
    if (s->state != C_OPEN)
        return;
    while (b_next < b_oldest + (uint64_t)opt.window) {
        uint64_t seq = b_next++;
        int slot = (int)(seq % (uint64_t)opt.window);
        b_remaining[slot] = b_nrecv;
        b_sent_at[slot] = now;
        if (opt.mode == M_TOPICS) {
            int topic = (int)(seq % (uint64_t)opt.topics);
            b_remaining[slot] = t_count[topic];
            topics_publish(s, topic, seq);
        } else {
            uint8_t h[16];
            put_hex16(h, seq);
            queue_frame(s, 1, 0, h, tmpl, opt.size);
        }
        if (measuring)
            st.sent++;
    }
    flush_out(s);
}

static void bcast_complete_check(uint64_t now)
{
    if (!b_synced)
        return;
    int moved = 0;
    while (b_oldest < b_next && b_remaining[b_oldest % (uint64_t)opt.window] <= 0) {
        b_oldest++;
        moved = 1;
        if (measuring)
            st.completed++;
    }
    if (moved) {
        b_last_progress = now;
        if (!finished)
            bcast_send(now);
    }
}

static void bcast_sync(uint64_t now)
{
    /* before measuring: one sync message at a time until one reached every receiver */
    for (uint64_t k = 0; k < 64 && k < b_sync_id; k++) {
        if (b_sync_seen[(b_sync_id - k) % 64] >= b_nrecv) {
            b_synced = 1;
            b_last_progress = now;
            t_open_all = now; /* warm-up starts now */
            bcast_send(now);
            return;
        }
    }
    /* a slow server may take long to fan one out: do not flood it with syncs */
    if (now - b_last_sync < 100000000ull)
        return;
    b_last_sync = now;
    b_sync_id++;
    b_sync_seen[b_sync_id % 64] = 0;
    char m[96];
    if (opt.mode == M_TOPICS) {
        for (int k = 0; k < opt.topics; k++) {
            int n = snprintf(m, sizeof m, "{\"type\":\"publish\",\"topic\":\"t%d\",\"data\":\"S%llu\"}",
                             k, (unsigned long long)b_sync_id);
            queue_frame(&conns[0], 1, 0, NULL, (uint8_t *)m, (size_t)n);
        }
    } else {
        int n = snprintf(m, sizeof m, "S%llu", (unsigned long long)b_sync_id);
        queue_frame(&conns[0], 1, 0, NULL, (uint8_t *)m, (size_t)n);
    }
    flush_out(&conns[0]);
}


/* ------------------------------------------------------------------ */
/* output                                                               */

static int measure_started;
static uint64_t t_ready;

static void print_results(const char *failure)
{
    double secs = measure_started && t_end > t_measure ? (double)(t_end - t_measure) / 1e9 : 0;
    double cpu = secs > 0 ? (cpu_total - cpu_at_measure) / secs : 0;
    double user = secs > 0 ? (user_total - user_at_measure) / secs : 0;
    uint64_t count = opt.mode == M_HANDSHAKE ? st.completed : st.received;
    uint64_t errors = st.conn_failed + st.handshake_failed + st.mismatches + st.proto_errors +
                      st.closed_by_server + st.lost + st.dup + st.deflate_refused + st.stalled;
    const char *modes[] = {"echo", "deflate", "handshake", "idle", "broadcast", "topics"};
    printf("{\"mode\":\"%s\",\"ports\":[", modes[opt.mode]);
    for (int i = 0; i < opt.nports; i++)
        printf("%s%d", i ? "," : "", opt.ports[i]);
    printf("],\"connections\":%d,\"requested\":%d,\"size\":%zu,\"depth\":%d,\"in_flight\":%d,",
           opened, opt.conns, opt.size, opt.depth, opt.in_flight);
    printf("\"duration_s\":%.3f,\"msgs_per_s\":%.1f,\"mb_per_s\":%.2f,", secs,
           secs > 0 ? (double)count / secs : 0.0, secs > 0 ? (double)st.bytes / secs / 1e6 : 0.0);
    printf("\"p50_us\":%llu,\"p90_us\":%llu,\"p99_us\":%llu,\"max_us\":%llu,\"samples\":%llu,",
           (unsigned long long)hist_pct(0.50), (unsigned long long)hist_pct(0.90),
           (unsigned long long)hist_pct(0.99), (unsigned long long)hist_max,
           (unsigned long long)hist_n);
    printf("\"sent\":%llu,\"received\":%llu,", (unsigned long long)st.sent,
           (unsigned long long)st.received);
    if (opt.mode == M_DEFLATE)
        printf("\"compressed\":%llu,", (unsigned long long)st.compressed);
    if (opt.mode == M_BROADCAST || opt.mode == M_TOPICS)
        printf("\"receivers\":%d,\"broadcasts_per_s\":%.1f,\"cross_deliveries_per_s\":%.1f,",
               b_nrecv, secs > 0 ? (double)st.completed / secs : 0.0,
               secs > 0 ? (double)st.cross / secs : 0.0);
    if (opt.mode == M_TOPICS)
        printf("\"topics\":%d,\"window\":%d,", opt.topics, opt.window);
    if (opt.mode == M_IDLE)
        printf("\"open_s\":%.3f,", t_ready ? (double)(t_ready - t_begin) / 1e9 : 0.0);
    printf("\"errors\":%llu,\"conn_failed\":%llu,\"handshake_failed\":%llu,\"mismatches\":%llu,"
           "\"proto_errors\":%llu,\"closed_by_server\":%llu,\"lost\":%llu,\"dup\":%llu,"
           "\"deflate_refused\":%llu,\"deflate_negotiated\":%d,\"stalled\":%llu,"
           "\"unclean_close\":%llu,\"close_timeouts\":%llu,",
           (unsigned long long)errors, (unsigned long long)st.conn_failed,
           (unsigned long long)st.handshake_failed, (unsigned long long)st.mismatches,
           (unsigned long long)st.proto_errors, (unsigned long long)st.closed_by_server,
           (unsigned long long)st.lost, (unsigned long long)st.dup,
           (unsigned long long)st.deflate_refused, deflate_negotiated,
           (unsigned long long)st.stalled, (unsigned long long)st.unclean_close,
           (unsigned long long)st.close_timeouts);
    printf("\"loadgen_cpu\":%.3f,\"loadgen_user\":%.3f", cpu, user);
    if (failure)
        printf(",\"failure\":\"%s\"", failure);
    printf("}\n");
    fflush(stdout);
}

/* ------------------------------------------------------------------ */
/* main                                                                 */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loadgen --mode echo|deflate|handshake|idle|broadcast|topics --port P[,P2...] [options]\n"
            "  -c, --conns N          connections (echo/deflate/idle), loops (handshake),\n"
            "                         receivers (broadcast, topics; plus one sender) [1]\n"
            "  --topics T             topics: subscriber i follows topic t<i %% T>   [100]\n"
            "  --size BYTES           message size (>= 16)                           [32]\n"
            "  --type text|binary     message type (echo)                            [text]\n"
            "  --depth D              messages in flight per connection (echo)       [1]\n"
            "  --in-flight N          echo: at most N in flight over all connections,\n"
            "                         which take turns (0: depth on each)           [0]\n"
            "  --window W             broadcast, topics: messages not yet delivered\n"
            "                         to every receiver (of their topic)            [8]\n"
            "  --warmup S             seconds before measuring                       [1]\n"
            "  --duration S           measured seconds                               [3]\n"
            "  --hold S               idle: seconds to hold after ready (or SIGTERM) [30]\n"
            "  --concurrency K        connections being opened at once               [64]\n"
            "  --connect-timeout S    give up when not all are open by then          [15]\n"
            "deflate mode offers permessage-deflate; client_no_context_takeover;\n"
            "server_no_context_takeover and sends 4 KiB-ish JSON text precompressed.\n"
            "broadcast: the sender is on the first port, receivers spread over all ports.\n"
            "topics: wshub.v1 (docs/protocol.md); one publisher on the first port publishes\n"
            "to t0, t1, ... in turn; each topic's subscribers spread over all ports.\n"
            "Prints one JSON line (idle: a {\"event\":\"ready\"} line first).\n");
}

static void on_signal(int sig)
{
    (void)sig;
    stop_signal = 1;
}

static void finish(const char *failure)
{
    finished = 1;
    t_end = now_ns();
    cpu_total = cpu_seconds(&user_total);
    /* leave politely: a Close frame after whatever is queued, one write, then go */
    static const uint8_t close_payload[2] = {0x03, 0xe8}; /* 1000 */
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        if (c->fd < 0)
            continue;
        if (c->state == C_OPEN) {
            queue_frame(c, 8, 0, NULL, close_payload, 2);
            if (write(c->fd, c->out.p + c->out.off, c->out.len - c->out.off) < 0) {
                /* nothing to do: we are leaving */
            }
        }
        close(c->fd);
        c->fd = -1;
    }
    print_results(failure);
}

int main(int argc, char **argv)
{
    static struct option lo[] = {
        {"mode", 1, 0, 'm'},      {"port", 1, 0, 'p'},      {"conns", 1, 0, 'c'},
        {"size", 1, 0, 's'},      {"type", 1, 0, 't'},      {"depth", 1, 0, 'd'},
        {"window", 1, 0, 'w'},    {"warmup", 1, 0, 'W'},    {"duration", 1, 0, 'D'},
        {"hold", 1, 0, 'H'},      {"concurrency", 1, 0, 'k'}, {"connect-timeout", 1, 0, 'T'},
        {"topics", 1, 0, 'P'},    {"in-flight", 1, 0, 'I'}, {"help", 0, 0, 'h'},
        {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "c:h", lo, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (!strcmp(optarg, "echo"))
                opt.mode = M_ECHO;
            else if (!strcmp(optarg, "deflate"))
                opt.mode = M_DEFLATE;
            else if (!strcmp(optarg, "handshake"))
                opt.mode = M_HANDSHAKE;
            else if (!strcmp(optarg, "idle"))
                opt.mode = M_IDLE;
            else if (!strcmp(optarg, "broadcast"))
                opt.mode = M_BROADCAST;
            else if (!strcmp(optarg, "topics"))
                opt.mode = M_TOPICS;
            else {
                usage(stderr);
                return 2;
            }
            break;
        case 'p': {
            char *s = optarg, *e;
            while (*s && opt.nports < 16) {
                long v = strtol(s, &e, 10);
                if (e == s || v <= 0 || v > 65535) {
                    usage(stderr);
                    return 2;
                }
                opt.ports[opt.nports++] = (int)v;
                s = *e == ',' ? e + 1 : e;
            }
            break;
        }
        case 'c':
            opt.conns = atoi(optarg);
            break;
        case 's':
            opt.size = (size_t)strtoull(optarg, NULL, 10);
            break;
        case 't':
            opt.binary = !strcmp(optarg, "binary");
            break;
        case 'd':
            opt.depth = atoi(optarg);
            break;
        case 'w':
            opt.window = atoi(optarg);
            break;
        case 'I':
            opt.in_flight = atoi(optarg);
            break;
        case 'W':
            opt.warmup = atof(optarg);
            break;
        case 'D':
            opt.duration = atof(optarg);
            break;
        case 'H':
            opt.hold = atof(optarg);
            break;
        case 'k':
            opt.concurrency = atoi(optarg);
            break;
        case 'T':
            opt.connect_timeout = atof(optarg);
            break;
        case 'P':
            opt.topics = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!opt.nports || opt.conns < 1 || opt.depth < 1 || opt.window < 1 || opt.topics < 1 ||
        opt.in_flight < 0 ||
        opt.size > (1u << 30) || opt.duration <= 0 || opt.warmup < 0) {
        usage(stderr);
        return 2;
    }
    if (opt.size < 16)
        opt.size = 16;

    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    rng_seed();
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    if (opt.mode == M_DEFLATE)
        make_deflate_payloads();
    else
        make_template();
    scratch_cap = opt.size + 1024;
    scratch = malloc(scratch_cap);
    if (inflateInit2(&infl, -15) != Z_OK)
        return 2;

    epfd = epoll_create1(EPOLL_CLOEXEC);
    nconns = opt.conns + (opt.mode == M_BROADCAST || opt.mode == M_TOPICS ? 1 : 0);
    t_count = calloc((size_t)opt.topics, sizeof *t_count);
    conns = calloc((size_t)nconns, sizeof *conns);
    if (opt.in_flight && (opt.mode == M_ECHO || opt.mode == M_DEFLATE)) {
        turns_cap = (size_t)nconns * (size_t)opt.depth;
        turns = calloc(turns_cap, sizeof *turns);
    } else {
        opt.in_flight = 0;
    }
    for (int i = 0; i < nconns; i++) {
        struct conn *c = &conns[i];
        c->id = i;
        c->fd = -1;
        c->state = C_FREE;
        switch (opt.mode) {
        case M_ECHO:
        case M_DEFLATE:
            c->role = R_ECHO;
            c->sent_at = calloc((size_t)opt.depth, sizeof *c->sent_at);
            c->port = opt.ports[i % opt.nports];
            break;
        case M_HANDSHAKE:
            c->role = R_CYCLE;
            c->port = opt.ports[i % opt.nports];
            break;
        case M_IDLE:
            c->role = R_IDLE;
            c->port = opt.ports[i % opt.nports];
            break;
        case M_BROADCAST:
            c->role = i ? R_RECEIVER : R_SENDER;
            c->port = i ? opt.ports[(i - 1) % opt.nports] : opt.ports[0];
            break;
        case M_TOPICS:
            /* subscriber j = i - 1 follows topic j % T; the subscribers of one topic
               go round-robin over the ports, so every node has some of every topic */
            c->role = i ? R_RECEIVER : R_SENDER;
            c->topic = i ? (i - 1) % opt.topics : 0;
            c->port = i ? opt.ports[((i - 1) / opt.topics) % opt.nports] : opt.ports[0];
            break;
        }
    }
    b_sent_at = calloc((size_t)opt.window, sizeof *b_sent_at);
    b_remaining = calloc((size_t)opt.window, sizeof *b_remaining);

    struct epoll_event evs[512];
    t_begin = now_ns();
    uint64_t warm_ns = (uint64_t)(opt.warmup * 1e9), dur_ns = (uint64_t)(opt.duration * 1e9);
    uint64_t deadline = t_begin + (uint64_t)((opt.connect_timeout + opt.warmup + opt.duration +
                                              (opt.mode == M_IDLE ? opt.hold : 0) + 10) * 1e9);
    int next_start = 0;
    if (opt.mode == M_HANDSHAKE) {
        t_open_all = t_begin;
        for (; next_start < nconns; next_start++)
            conn_start(&conns[next_start]);
    }
    for (;;) {
        while (next_start < nconns && connecting < opt.concurrency)
            conn_start(&conns[next_start++]);
        int n = epoll_wait(epfd, evs, 512, 5);
        uint64_t now = now_ns();
        for (int i = 0; i < n; i++)
            on_event(evs[i].data.ptr, evs[i].events, now);

        if (stop_signal) {
            finish(opt.mode == M_IDLE ? NULL : "interrupted");
            return 0;
        }
        if (now > deadline) {
            finish("timeout");
            return 1;
        }
        if (!t_open_all && next_start == nconns && connecting == 0) {
            if (opened == 0) {
                finish("no connection could be opened");
                return 1;
            }
            if (opt.mode == M_BROADCAST || opt.mode == M_TOPICS) {
                if (conns[0].state != C_OPEN) {
                    finish("the sender could not connect");
                    return 1;
                }
                /* topics: every subscription answered first */
                if (opt.mode != M_TOPICS || t_subscribed >= receivers_open) {
                    if (!b_nrecv && !b_sync_id)
                        b_nrecv = opt.mode == M_TOPICS ? t_subscribed : receivers_open;
                    bcast_sync(now);
                }
            } else {
                t_open_all = now;
                if (opt.mode == M_ECHO || opt.mode == M_DEFLATE)
                    echo_start(now);
                if (opt.mode == M_IDLE) {
                    t_ready = now;
                    printf("{\"event\":\"ready\",\"connections\":%d,\"failed\":%llu,"
                           "\"open_s\":%.3f}\n",
                           opened, (unsigned long long)(st.conn_failed + st.handshake_failed),
                           (double)(now - t_begin) / 1e9);
                    fflush(stdout);
                }
            }
        }
        if (!t_open_all && now - t_begin > (uint64_t)(opt.connect_timeout * 1e9)) {
            finish(opt.mode == M_TOPICS      ? "subscribe or sync timed out"
                   : opt.mode == M_BROADCAST ? "broadcast sync timed out"
                                             : "connect timeout");
            return 1;
        }
        if (opt.mode == M_IDLE) {
            if (t_ready && now - t_ready > (uint64_t)(opt.hold * 1e9)) {
                finish(NULL);
                return 0;
            }
            continue;
        }
        if (t_open_all && !measure_started && now >= t_open_all + warm_ns) {
            measure_started = 1;
            measuring = 1;
            t_measure = now;
            st.sent = st.received = st.bytes = st.completed = st.cross = st.compressed = 0;
            memset(hist, 0, sizeof hist);
            hist_n = hist_max = 0;
            cpu_at_measure = cpu_seconds(&user_at_measure);
        }
        if (measure_started && now >= t_measure + dur_ns) {
            finish(NULL);
            return 0;
        }
        if (opt.mode == M_HANDSHAKE) {
            for (int i = 0; i < nconns; i++) {
                struct conn *c = &conns[i];
                if (c->state == C_WAIT_FIN && now - c->t_close > 1000000000ull) {
                    st.close_timeouts++;
                    cycle_done(c, now, 0);
                }
            }
        }
        if ((opt.mode == M_BROADCAST || opt.mode == M_TOPICS) && b_synced) {
            if (conns[0].state != C_OPEN) {
                finish("the sender's connection was closed");
                return 1;
            }
            if (now - b_last_progress > 3000000000ull) {
                st.stalled = 1;
                finish("broadcast stalled: a message was not delivered to every receiver in 3 s");
                return 1;
            }
        }
        if (opt.mode != M_HANDSHAKE && opened == 0 && t_open_all) {
            finish("every connection was closed");
            return 1;
        }
    }
}
