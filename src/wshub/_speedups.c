/* Optional C accelerator for wshub's hot loop.
 *
 * Two functions, each with a pure-Python twin in wshub/protocol that
 * behaves identically (the test suite runs both; WSHUB_NO_EXTENSIONS=1
 * forces the pure path):
 *
 *   apply_mask(data, mask) -> bytes
 *       XOR data with the 4-byte mask repeated (RFC 6455 section 5.3).
 *
 *   scan_frames(data, pos, max_payload, decoder=None) -> (events, pos)
 *       Starting at pos, turn every *simple* frame into an event: a complete,
 *       final (FIN), masked text or binary frame, without RSV bits, whose
 *       payload fits max_payload (< 1: no limit).  Text must be valid UTF-8
 *       and becomes str; binary becomes bytes.  Stops before the first frame
 *       that is anything else (incomplete, fragmented, control, RSV, invalid
 *       UTF-8, too big, unmasked ...), leaving it to the Python state
 *       machine, which then reports the same events or errors it always does.
 *       decoder, a codec's message_decoder (function, suffix), lets it take
 *       the same frames with RSV1 too (compressed, RFC 7692): the unmasked
 *       payload, suffix appended, goes to function(payload, room), which
 *       answers the decoded message or None; on None (or invalid UTF-8
 *       after decoding) it stops before the frame, and the Python state
 *       machine decodes it again, which is why only a codec that keeps
 *       nothing from one message to the next gives a decoder.
 *
 *   parse_upgrade_head(data, max_size, max_fields) -> tuple | None
 *       The common WebSocket upgrade request, whole in one read, parsed in
 *       one call: (target, headers, end).  Anything unusual (not GET, not
 *       HTTP/1.1, not an origin-form target, incomplete, a body, folded
 *       lines, odd bytes, over the limits ...) gives None and goes to
 *       httptools as before, which also makes every refusal.  What it
 *       accepts, httptools accepts with the same fields (a differential
 *       fuzz test holds it to that).  The pure-Python path always uses
 *       httptools.
 *
 *   accept_key(key) -> bytes
 *   hmac_sha256_states(key_block) -> bytes
 *   hmac_sha256_b64url(states, message) -> str
 *       The two digests of every handshake (Sec-WebSocket-Accept, the
 *       session cookie's MAC), SHA-1 and SHA-256 written out here: hashlib
 *       costs more per call than these one- or two-block messages cost to
 *       hash.  Twins: wshub.protocol.handshake._accept_key_py and
 *       wshub.policy._hmac_states_py / _hmac_b64url_py.  On x86-64 CPUs
 *       with the SHA extensions the blocks are hashed by their round
 *       instructions.
 *
 *   set_sha_ni(enabled) -> bool
 *       Whether those instructions are used (never where the CPU has none;
 *       on by default where it has them): the tests check both.
 *
 *   PayloadBuffer(total, initial, mask)
 *       The payload of one large frame, read straight into the bytes object
 *       that becomes the message: no chunk list, no join, unmasked in place.
 *       Its pure-Python twin is wshub.protocol.frames._PayloadBufferPy.
 *
 *   send_nowait(fd, data, more=False) -> int
 *   send_each(fds, data) -> [(i, sent)]
 *       send() on a plain socket whose transport holds nothing (not on
 *       Windows): one socket, or the same bytes to many back to back (a
 *       shared broadcast batch).  more: MSG_MORE, for the last bytes
 *       before a close, which the kernel then sends with the FIN.  No twin: without them the transport
 *       writes, as it always did (wshub.transport.http1, link).
 *
 *   accept_burst(fd, limit) -> (accepted, errno)
 *       Up to limit connections from a listening TCP socket (Linux): each
 *       accepted non-blocking and close-on-exec (TCP_NODELAY comes from the
 *       listener, whose options Linux gives every connection it accepts), as
 *       (fd, peer), the peer's address as socket.accept() gives it; errno
 *       is 0 when nothing more was waiting (or limit was reached), else
 *       the error that stopped it.  No Python socket object per connection
 *       (CPython's checks each new descriptor with getsockname).  No twin:
 *       without it wshub.transport.epoll calls socket.accept().
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>
#ifndef _WIN32
#include <errno.h>
#include <sys/socket.h>
#define WSHUB_HAVE_SEND 1
#endif
#ifdef __linux__
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <unistd.h>
#define WSHUB_HAVE_ACCEPT 1
#endif

/* x86-64: 16 bytes at a time with SSE2 (always there), 32 with AVX2 where
 * the CPU has it (checked once at import).  The mask repeats every 4 bytes,
 * so any multiple of 4 bytes keeps it in phase for the next loop. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && defined(__SSE2__)
#define WSHUB_X86_SIMD 1
#include <immintrin.h>

static int have_avx2 = 0;

__attribute__((target("avx2"))) static Py_ssize_t
xor_mask_avx2(const unsigned char *src, unsigned char *dst, Py_ssize_t n, uint32_t m32)
{
    const __m256i m = _mm256_set1_epi32((int)m32);
    Py_ssize_t i = 0;
    for (; i + 128 <= n; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(src + i + 96));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, m));
        _mm256_storeu_si256((__m256i *)(dst + i + 32), _mm256_xor_si256(b, m));
        _mm256_storeu_si256((__m256i *)(dst + i + 64), _mm256_xor_si256(c, m));
        _mm256_storeu_si256((__m256i *)(dst + i + 96), _mm256_xor_si256(d, m));
    }
    for (; i + 32 <= n; i += 32) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(src + i));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_xor_si256(a, m));
    }
    return i;
}

static Py_ssize_t
xor_mask_sse2(const unsigned char *src, unsigned char *dst, Py_ssize_t n, uint32_t m32)
{
    const __m128i m = _mm_set1_epi32((int)m32);
    Py_ssize_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, m));
        _mm_storeu_si128((__m128i *)(dst + i + 16), _mm_xor_si128(b, m));
        _mm_storeu_si128((__m128i *)(dst + i + 32), _mm_xor_si128(c, m));
        _mm_storeu_si128((__m128i *)(dst + i + 48), _mm_xor_si128(d, m));
    }
    for (; i + 16 <= n; i += 16) {
        __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
        _mm_storeu_si128((__m128i *)(dst + i), _mm_xor_si128(a, m));
    }
    return i;
}
#endif

static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t n,
         const unsigned char mask[4])
{
    uint32_t m32;
    uint64_t m64;
    Py_ssize_t i = 0;
    memcpy(&m32, mask, 4);
    m64 = ((uint64_t)m32 << 32) | m32;
#ifdef WSHUB_X86_SIMD
    if (n >= 64) {
        if (have_avx2) {
            i = xor_mask_avx2(src, dst, n, m32);
        }
        i += xor_mask_sse2(src + i, dst + i, n - i, m32);
    }
#endif
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= m64;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}

/* XOR in place (or from src to dst) starting at payload offset `phase`. */
static void
xor_mask_at(const unsigned char *src, unsigned char *dst, Py_ssize_t n,
            const unsigned char mask[4], Py_ssize_t phase)
{
    unsigned char rotated[4];
    int k;
    for (k = 0; k < 4; k++) {
        rotated[k] = mask[(phase + k) & 3];
    }
    xor_mask(src, dst, n, rotated);
}

static PyObject *
apply_mask(PyObject *self, PyObject *args)
{
    Py_buffer data, mask;
    PyObject *result;
    if (!PyArg_ParseTuple(args, "y*y*:apply_mask", &data, &mask)) {
        return NULL;
    }
    if (mask.len != 4) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "mask must be 4 bytes");
        return NULL;
    }
    result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        xor_mask((const unsigned char *)data.buf,
                 (unsigned char *)PyBytes_AS_STRING(result), data.len,
                 (const unsigned char *)mask.buf);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&mask);
    return result;
}

/* One compressed frame's message for scan_frames: the payload unmasked
 * into a bytes object with the suffix after it (one copy), decoded by
 * decode(payload, room); text then becomes str.  Py_None where scan_frames
 * must stop before the frame (the decoder refused it, or the text is not
 * UTF-8), NULL on an error to raise. */
static PyObject *
decode_message(PyObject *decode, const unsigned char *payload, Py_ssize_t length,
               const unsigned char *mask, const char *suffix, Py_ssize_t suffix_len,
               PyObject *room, int text)
{
    PyObject *masked, *decoded, *item;
    PyObject *call_args[2];

    masked = PyBytes_FromStringAndSize(NULL, length + suffix_len);
    if (masked == NULL) {
        return NULL;
    }
    xor_mask(payload, (unsigned char *)PyBytes_AS_STRING(masked), length, mask);
    memcpy(PyBytes_AS_STRING(masked) + length, suffix, (size_t)suffix_len);
    call_args[0] = masked;
    call_args[1] = room;
    decoded = PyObject_Vectorcall(decode, call_args, 2, NULL);
    Py_DECREF(masked);
    if (decoded == NULL || decoded == Py_None) {
        return decoded;
    }
    if (!PyBytes_CheckExact(decoded)) {
        Py_DECREF(decoded);
        PyErr_SetString(PyExc_TypeError, "scan_frames: the decoder must return bytes or None");
        return NULL;
    }
    if (!text) {
        return decoded;
    }
    item = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(decoded), PyBytes_GET_SIZE(decoded),
                                "strict");
    Py_DECREF(decoded);
    if (item == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return item;
}

static PyObject *
scan_frames(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    long long max_payload;
    PyObject *events, *result;
    PyObject *decoder = Py_None, *decode = NULL, *room = NULL;
    const unsigned char *buf;
    const char *suffix = NULL;
    Py_ssize_t end, suffix_len = 0;
    /* Scratch space for unmasking text before decoding it. */
    unsigned char small[512];
    /* The first byte a frame may start with: FIN, no RSV bits; RSV1 too
     * (0xC0) when a decoder is given. */
    unsigned char rsv_ok = 0x80;

    if (!PyArg_ParseTuple(args, "y*nL|O:scan_frames", &view, &pos, &max_payload, &decoder)) {
        return NULL;
    }
    if (decoder != Py_None) {
        PyObject *tail;
        if (!PyTuple_Check(decoder) || PyTuple_GET_SIZE(decoder) != 2
            || !PyCallable_Check(PyTuple_GET_ITEM(decoder, 0))
            || !PyBytes_Check(PyTuple_GET_ITEM(decoder, 1))) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError,
                            "scan_frames: decoder must be None or (function, bytes)");
            return NULL;
        }
        decode = PyTuple_GET_ITEM(decoder, 0);
        tail = PyTuple_GET_ITEM(decoder, 1);
        suffix = PyBytes_AS_STRING(tail);
        suffix_len = PyBytes_GET_SIZE(tail);
        room = PyLong_FromLongLong(max_payload > 0 ? max_payload : -1);
        if (room == NULL) {
            PyBuffer_Release(&view);
            return NULL;
        }
        rsv_ok = 0xC0;
    }
    events = PyList_New(0);
    if (events == NULL) {
        PyBuffer_Release(&view);
        Py_XDECREF(room);
        return NULL;
    }
    buf = (const unsigned char *)view.buf;
    end = view.len;
    if (pos < 0) {
        pos = 0;
    }
    while (end - pos >= 6) {
        unsigned char b0 = buf[pos], b1 = buf[pos + 1];
        unsigned char opcode = b0 & 0x0F;
        Py_ssize_t hlen = 2;
        uint64_t length = b1 & 0x7F;
        const unsigned char *mask, *payload;
        PyObject *item;

        if (((b0 & 0xF0) != 0x80 && (b0 & 0xF0) != rsv_ok) || (opcode != 1 && opcode != 2)
            || !(b1 & 0x80)) {
            break; /* not FIN, RSV set, control/continuation, or unmasked */
        }
        if (length == 126) {
            if (end - pos < 8) {
                break;
            }
            length = ((uint64_t)buf[pos + 2] << 8) | buf[pos + 3];
            hlen = 4;
        }
        else if (length == 127) {
            int k;
            if (end - pos < 14) {
                break;
            }
            length = 0;
            for (k = 0; k < 8; k++) {
                length = (length << 8) | buf[pos + 2 + k];
            }
            hlen = 10;
            if (length >> 62) {
                break;
            }
        }
        if (max_payload > 0 && length > (uint64_t)max_payload) {
            break;
        }
        if ((uint64_t)(end - pos - hlen - 4) < length) {
            break; /* incomplete */
        }
        mask = buf + pos + hlen;
        payload = mask + 4;
        if (b0 & 0x40) {
            item = decode_message(decode, payload, (Py_ssize_t)length, mask, suffix,
                                  suffix_len, room, opcode == 1);
            if (item == NULL) {
                goto error;
            }
            if (item == Py_None) {
                Py_DECREF(item);
                break; /* the Python state machine decodes it again and reports */
            }
        }
        else if (opcode == 2) {
            item = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
            if (item == NULL) {
                goto error;
            }
            xor_mask(payload, (unsigned char *)PyBytes_AS_STRING(item),
                     (Py_ssize_t)length, mask);
        }
        else {
            unsigned char *tmp = small;
            if (length > sizeof(small)) {
                tmp = PyMem_Malloc((size_t)length);
                if (tmp == NULL) {
                    PyErr_NoMemory();
                    goto error;
                }
            }
            xor_mask(payload, tmp, (Py_ssize_t)length, mask);
            item = PyUnicode_DecodeUTF8((const char *)tmp, (Py_ssize_t)length, "strict");
            if (tmp != small) {
                PyMem_Free(tmp);
            }
            if (item == NULL) {
                if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                    /* Invalid UTF-8: leave the frame to Python (1007). */
                    PyErr_Clear();
                    break;
                }
                goto error;
            }
        }
        if (PyList_Append(events, item) < 0) {
            Py_DECREF(item);
            goto error;
        }
        Py_DECREF(item);
        pos += hlen + 4 + (Py_ssize_t)length;
    }
    PyBuffer_Release(&view);
    Py_XDECREF(room);
    result = Py_BuildValue("(Nn)", events, pos);
    return result;

error:
    PyBuffer_Release(&view);
    Py_XDECREF(room);
    Py_DECREF(events);
    return NULL;
}

/* ------------------------------------------------------- parse_upgrade_head */

/* RFC 7230 tchar */
static int
is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* RFC 3986 unreserved, reserved and '%': what every HTTP parser accepts in
 * a path, query or fragment (llhttp takes any VCHAR there). */
static int
is_target_char(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) {
        return 1;
    }
    return c != 0 && strchr("-._~:/?#[]@!$&'()*+,;=%", c) != NULL;
}

/* field-value bytes: HTAB, SP, VCHAR, obs-text */
static int
is_value_char(unsigned char c)
{
    return c == '\t' || (c >= 0x20 && c != 0x7F);
}

/* The field names of nearly every upgrade request, made (and their hashes
 * computed) once: each request then shares them instead of building its
 * own strings. */
static const char *const known_names[] = {
    "host", "upgrade", "connection", "origin", "cookie", "user-agent", "pragma",
    "cache-control", "accept-encoding", "accept-language", "sec-websocket-key",
    "sec-websocket-version", "sec-websocket-extensions", "sec-websocket-protocol",
    "x-forwarded-for", "forwarded", NULL,
};
#define N_KNOWN (sizeof(known_names) / sizeof(known_names[0]) - 1)
static PyObject *known_objs[N_KNOWN];
static size_t known_lens[N_KNOWN];

static int
init_known_names(void)
{
    size_t i;
    for (i = 0; i < N_KNOWN; i++) {
        known_lens[i] = strlen(known_names[i]);
        known_objs[i] = PyUnicode_InternFromString(known_names[i]);
        if (known_objs[i] == NULL || PyObject_Hash(known_objs[i]) == -1) {
            return -1;
        }
    }
    return 0;
}

/* Whether a Connection field value has the token "upgrade" in the plainest
 * spelling: a comma-separated element that is "upgrade" (any case) with
 * only spaces around it.  llhttp then flags the request as an upgrade too. */
static int
has_upgrade_token(const unsigned char *v, Py_ssize_t n)
{
    Py_ssize_t i = 0, start, stop;
    while (i <= n) {
        while (i < n && v[i] == ' ') {
            i++;
        }
        start = i;
        while (i < n && v[i] != ',') {
            i++;
        }
        stop = i;
        while (stop > start && v[stop - 1] == ' ') {
            stop--;
        }
        if (stop - start == 7) {
            char low[7];
            int k;
            for (k = 0; k < 7; k++) {
                unsigned char c = v[start + k];
                low[k] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
            }
            if (memcmp(low, "upgrade", 7) == 0) {
                return 1;
            }
        }
        i++; /* past the ',' (or the end) */
    }
    return 0;
}

/* A new reference to the str for this lower-case name. */
static PyObject *
field_name(const char *lower, Py_ssize_t n)
{
    size_t i;
    for (i = 0; i < N_KNOWN; i++) {
        if ((Py_ssize_t)known_lens[i] == n && memcmp(known_names[i], lower, (size_t)n) == 0) {
            Py_INCREF(known_objs[i]);
            return known_objs[i];
        }
    }
    return PyUnicode_DecodeLatin1(lower, n, NULL);
}

static PyObject *
parse_upgrade_head(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t max_size, max_fields, pos, end, head_end, nfields = 0;
    int upgrade_field = 0, connection_upgrade = 0;
    const unsigned char *b;
    PyObject *headers = NULL, *target = NULL, *result = NULL;

    if (!PyArg_ParseTuple(args, "y*nn:parse_upgrade_head", &view, &max_size, &max_fields)) {
        return NULL;
    }
    b = (const unsigned char *)view.buf;
    end = view.len;
    /* The head must be complete, and within max_size. */
    head_end = -1;
    for (pos = 3; pos < end && pos < max_size; pos++) {
        if (b[pos] == '\n' && b[pos - 1] == '\r' && b[pos - 2] == '\n' && b[pos - 3] == '\r') {
            head_end = pos + 1;
            break;
        }
    }
    if (head_end < 0) {
        goto fallback;
    }
    /* Request line: "GET " target " HTTP/1.1\r\n", the target in origin-form
     * (RFC 9112 §3.2.1).  "*", absolute-form and whatever does not start
     * with "/" ("?x", "chat", "[x]") are httptools' to accept or refuse. */
    if (head_end < 16 || memcmp(b, "GET /", 5) != 0) {
        goto fallback;
    }
    pos = 5;
    while (pos < head_end && is_target_char(b[pos])) {
        pos++;
    }
    if (pos == 4 || head_end - pos < 11 || memcmp(b + pos, " HTTP/1.1\r\n", 11) != 0) {
        goto fallback;
    }
    target = PyUnicode_DecodeLatin1((const char *)b + 4, pos - 4, NULL);
    if (target == NULL) {
        goto error;
    }
    pos += 11;
    headers = PyDict_New();
    if (headers == NULL) {
        goto error;
    }
    /* Fields, up to the empty line. */
    while (!(b[pos] == '\r' && b[pos + 1] == '\n')) {
        Py_ssize_t name_start = pos, name_end, value_start, value_end;
        char lower[64];
        PyObject *name, *value, *old;
        int k;

        while (pos < head_end && is_tchar(b[pos])) {
            pos++;
        }
        name_end = pos;
        if (name_end == name_start || name_end - name_start > (Py_ssize_t)sizeof(lower)
            || b[pos] != ':') {
            goto fallback;
        }
        pos++;
        while (b[pos] == ' ' || b[pos] == '\t') {
            pos++;
        }
        value_start = pos;
        while (pos < head_end && b[pos] != '\r') {
            if (!is_value_char(b[pos])) {
                goto fallback;
            }
            pos++;
        }
        if (pos + 1 >= head_end || b[pos + 1] != '\n') {
            goto fallback;
        }
        value_end = pos;
        while (value_end > value_start && (b[value_end - 1] == ' ' || b[value_end - 1] == '\t')) {
            value_end--;
        }
        pos += 2;
        if (++nfields > max_fields) {
            goto fallback;
        }
        for (k = 0; k < name_end - name_start; k++) {
            unsigned char c = b[name_start + k];
            lower[k] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
        }
        if ((k == 14 && memcmp(lower, "content-length", 14) == 0)
            || (k == 17 && memcmp(lower, "transfer-encoding", 17) == 0)) {
            goto fallback; /* a body: httptools' business */
        }
        if (head_end < end) {
            /* Bytes follow the head: see below. */
            if (k == 7 && memcmp(lower, "upgrade", 7) == 0 && value_end > value_start) {
                upgrade_field = 1; /* llhttp flags an Upgrade only with a value */
            }
            else if (k == 10 && memcmp(lower, "connection", 10) == 0 && !connection_upgrade) {
                connection_upgrade = has_upgrade_token(b + value_start, value_end - value_start);
            }
        }
        name = field_name(lower, k);
        if (name == NULL) {
            goto error;
        }
        value = PyUnicode_DecodeLatin1((const char *)b + value_start, value_end - value_start, NULL);
        if (value == NULL) {
            Py_DECREF(name);
            goto error;
        }
        old = PyDict_GetItemWithError(headers, name);
        if (old != NULL) {
            /* A repeat: joined the way HTTP (and handshake.add_header) does. */
            PyObject *joined = PyUnicode_FromFormat(
                (k == 6 && memcmp(lower, "cookie", 6) == 0) ? "%U; %U" : "%U, %U", old, value);
            Py_DECREF(value);
            value = joined;
            if (value == NULL) {
                Py_DECREF(name);
                goto error;
            }
        }
        else if (PyErr_Occurred()) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto error;
        }
        if (PyDict_SetItem(headers, name, value) < 0) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto error;
        }
        Py_DECREF(name);
        Py_DECREF(value);
    }
    if (pos + 2 != head_end) {
        goto fallback;
    }
    if (head_end < end && !(upgrade_field && connection_upgrade)) {
        /* Bytes after the head go to the WebSocket only if httptools, too,
         * would stop there for an upgrade; otherwise it reads them as the
         * next request, and it is for httptools to say what follows. */
        goto fallback;
    }
    result = Py_BuildValue("(OOn)", target, headers, head_end);
    Py_DECREF(target);
    Py_DECREF(headers);
    PyBuffer_Release(&view);
    return result;

fallback:
    Py_XDECREF(target);
    Py_XDECREF(headers);
    PyBuffer_Release(&view);
    Py_RETURN_NONE;

error:
    Py_XDECREF(target);
    Py_XDECREF(headers);
    PyBuffer_Release(&view);
    return NULL;
}

/* ------------------------------------------------------------ PayloadBuffer
 *
 * A bytes object filled in place.  It starts at `initial` bytes and doubles
 * (up to `total`) only when full, so what it holds is bounded by what the
 * peer really sent, not by the length its frame header claims.  The buffer
 * protocol exposes the part not yet filled, writable, so a transport can
 * recv_into() it; filled(n) then unmasks those n bytes in place.  take()
 * hands over the bytes object once it is complete: it was never visible to
 * Python code before, so writing into it was safe.
 */
typedef struct {
    PyObject_HEAD
    PyObject *data;       /* the bytes being filled; NULL after take() */
    Py_ssize_t total;     /* its final size */
    Py_ssize_t alloc;     /* its size now */
    Py_ssize_t filled;    /* bytes written and unmasked */
    Py_ssize_t exports;   /* live buffer views */
    unsigned char mask[4];
} PayloadBuffer;

static PyObject *
PayloadBuffer_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t total, initial;
    Py_buffer mask;
    PayloadBuffer *self;
    static char *kwlist[] = {"total", "initial", "mask", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nny*:PayloadBuffer", kwlist,
                                     &total, &initial, &mask)) {
        return NULL;
    }
    if (mask.len != 4 || total < 0) {
        PyBuffer_Release(&mask);
        PyErr_SetString(PyExc_ValueError, "need total >= 0 and a 4-byte mask");
        return NULL;
    }
    self = (PayloadBuffer *)type->tp_alloc(type, 0);
    if (self == NULL) {
        PyBuffer_Release(&mask);
        return NULL;
    }
    memcpy(self->mask, mask.buf, 4);
    PyBuffer_Release(&mask);
    if (initial < 1) {
        initial = 1;
    }
    self->total = total;
    self->alloc = initial < total ? initial : total;
    self->data = PyBytes_FromStringAndSize(NULL, self->alloc);
    if (self->data == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void
PayloadBuffer_dealloc(PayloadBuffer *self)
{
    Py_XDECREF(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Make room for at least one more byte (the caller checked filled < total). */
static int
PayloadBuffer_grow(PayloadBuffer *self)
{
    Py_ssize_t size = self->alloc;
    if (self->filled < size) {
        return 0;
    }
    size = size > self->total / 2 ? self->total : size * 2;
    if (size <= self->alloc) {
        size = self->alloc + 1;
    }
    if (self->exports != 0) {
        /* A view of the old block is alive: moving it could let that view
           write into freed memory. */
        PyErr_SetString(PyExc_BufferError, "a window of this payload is still in use");
        return -1;
    }
    /* Nobody else has seen this object: realloc it in place (for large
       blocks glibc moves pages instead of copying them). */
    if (_PyBytes_Resize(&self->data, size) < 0) {
        return -1;
    }
    self->alloc = size;
    return 0;
}

static int
PayloadBuffer_check(PayloadBuffer *self)
{
    if (self->data == NULL) {
        PyErr_SetString(PyExc_ValueError, "the payload was taken already");
        return -1;
    }
    return 0;
}

static int
PayloadBuffer_getbuffer(PayloadBuffer *self, Py_buffer *view, int flags)
{
    if (PayloadBuffer_check(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (self->filled >= self->total) {
        PyErr_SetString(PyExc_BufferError, "the payload is complete");
        view->obj = NULL;
        return -1;
    }
    if (PayloadBuffer_grow(self) < 0) {
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self,
                          PyBytes_AS_STRING(self->data) + self->filled,
                          self->alloc - self->filled, 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
PayloadBuffer_releasebuffer(PayloadBuffer *self, Py_buffer *view)
{
    self->exports--;
}

static PyObject *
PayloadBuffer_window(PayloadBuffer *self, PyObject *unused)
{
    return PyMemoryView_FromObject((PyObject *)self);
}

static PyObject *
PayloadBuffer_filled_in(PayloadBuffer *self, PyObject *arg)
{
    Py_ssize_t n = PyLong_AsSsize_t(arg);
    unsigned char *at;
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (PayloadBuffer_check(self) < 0) {
        return NULL;
    }
    if (n < 0 || n > self->alloc - self->filled) {
        PyErr_SetString(PyExc_ValueError, "more bytes than the window holds");
        return NULL;
    }
    at = (unsigned char *)PyBytes_AS_STRING(self->data) + self->filled;
    xor_mask_at(at, at, n, self->mask, self->filled);
    self->filled += n;
    Py_RETURN_NONE;
}

static PyObject *
PayloadBuffer_write(PayloadBuffer *self, PyObject *arg)
{
    Py_buffer src;
    const unsigned char *from;
    Py_ssize_t left;
    if (PayloadBuffer_check(self) < 0) {
        return NULL;
    }
    if (PyObject_GetBuffer(arg, &src, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (src.len > self->total - self->filled) {
        PyBuffer_Release(&src);
        PyErr_SetString(PyExc_ValueError, "more bytes than the payload has left");
        return NULL;
    }
    from = (const unsigned char *)src.buf;
    left = src.len;
    while (left > 0) {
        Py_ssize_t room, n;
        if (PayloadBuffer_grow(self) < 0) {
            PyBuffer_Release(&src);
            return NULL;
        }
        room = self->alloc - self->filled;
        n = left < room ? left : room;
        xor_mask_at(from, (unsigned char *)PyBytes_AS_STRING(self->data) + self->filled,
                    n, self->mask, self->filled);
        self->filled += n;
        from += n;
        left -= n;
    }
    PyBuffer_Release(&src);
    Py_RETURN_NONE;
}

static PyObject *
PayloadBuffer_take(PayloadBuffer *self, PyObject *unused)
{
    PyObject *data;
    if (PayloadBuffer_check(self) < 0) {
        return NULL;
    }
    if (self->filled != self->total) {
        PyErr_SetString(PyExc_ValueError, "the payload is not complete");
        return NULL;
    }
    data = self->data;
    self->data = NULL;
    return data;
}

static PyMemberDef PayloadBuffer_members[] = {
    {"total", T_PYSSIZET, offsetof(PayloadBuffer, total), READONLY,
     "the payload's length"},
    {"filled", T_PYSSIZET, offsetof(PayloadBuffer, filled), READONLY,
     "bytes received so far"},
    {"allocated", T_PYSSIZET, offsetof(PayloadBuffer, alloc), READONLY,
     "bytes allocated so far"},
    {NULL},
};

static PyMethodDef PayloadBuffer_methods[] = {
    {"window", (PyCFunction)PayloadBuffer_window, METH_NOARGS,
     "window() -> memoryview: writable view of the next bytes to receive."},
    {"filled_in", (PyCFunction)PayloadBuffer_filled_in, METH_O,
     "filled_in(n): n bytes were received into the window; unmask them."},
    {"write", (PyCFunction)PayloadBuffer_write, METH_O,
     "write(data): append masked bytes received elsewhere, unmasking them."},
    {"take", (PyCFunction)PayloadBuffer_take, METH_NOARGS,
     "take() -> bytes: the complete, unmasked payload."},
    {NULL, NULL, 0, NULL},
};

static PyBufferProcs PayloadBuffer_as_buffer = {
    (getbufferproc)PayloadBuffer_getbuffer,
    (releasebufferproc)PayloadBuffer_releasebuffer,
};

static PyTypeObject PayloadBufferType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "wshub._speedups.PayloadBuffer",
    .tp_basicsize = sizeof(PayloadBuffer),
    .tp_dealloc = (destructor)PayloadBuffer_dealloc,
    .tp_as_buffer = &PayloadBuffer_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The payload of one large frame, received and unmasked in place.",
    .tp_methods = PayloadBuffer_methods,
    .tp_members = PayloadBuffer_members,
    .tp_new = PayloadBuffer_new,
};

/* ------------------------------------------------ the handshake's digests */

/* SHA-1 and SHA-256 (FIPS 180-4) for the two short digests of every
 * handshake: Sec-WebSocket-Accept, SHA-1 of the key and the GUID (RFC 6455
 * section 4.2.2), and the session cookie's HMAC-SHA256 (RFC 2104).  These
 * messages are one or two blocks: making and copying hashlib's OpenSSL
 * objects costs more than hashing them.  The pure-Python twins (hashlib)
 * are wshub.protocol.handshake._accept_key_py and wshub.policy's
 * _hmac_states_py / _hmac_b64url_py. */

#define ROL32(x, n) (((x) << (n)) | ((x) >> (32 - (n))))
#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static uint32_t
load_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void
store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* x86-64 CPUs with the SHA extensions (checked once at import) hash a block
 * with their SHA-1 and SHA-256 round instructions, a few times faster than
 * the portable loops below, which stay for the other CPUs (and for the
 * tests: set_sha_ni(False)). */
#if defined(WSHUB_X86_SIMD) && defined(__x86_64__)
#define WSHUB_SHA_NI 1
static int have_sha_ni = 0;
static int use_sha_ni = 0;

/* Each 32-bit word byte-swapped (SHA-256) / the 16 bytes reversed (SHA-1). */
#define BSWAP32_LANES _mm_set_epi64x(0x0c0d0e0f08090a0bLL, 0x0405060700010203LL)
#define REVERSE_BYTES _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL)

static const uint32_t sha256_k[64];

__attribute__((target("sha,sse4.1,ssse3"))) static void
sha256_block_ni(uint32_t *h, const unsigned char *p)
{
    __m128i w[16], abef, cdgh, abef_in, cdgh_in, t, m;
    int i;
    /* The state as the round instruction wants it: (a, b, e, f), (c, d, g, h). */
    t = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0xB1);
    cdgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)(h + 4)), 0x1B);
    abef = _mm_alignr_epi8(t, cdgh, 8);
    cdgh = _mm_blend_epi16(cdgh, t, 0xF0);
    abef_in = abef;
    cdgh_in = cdgh;
    for (i = 0; i < 16; i++) {
        /* Four words of the schedule, then four rounds with them. */
        if (i < 4) {
            m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), BSWAP32_LANES);
        }
        else {
            m = _mm_sha256msg1_epu32(w[i - 4], w[i - 3]);
            m = _mm_add_epi32(m, _mm_alignr_epi8(w[i - 1], w[i - 2], 4));
            m = _mm_sha256msg2_epu32(m, w[i - 1]);
        }
        w[i] = m;
        m = _mm_add_epi32(m, _mm_loadu_si128((const __m128i *)(sha256_k + 4 * i)));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, m);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(m, 0x0E));
    }
    abef = _mm_add_epi32(abef, abef_in);
    cdgh = _mm_add_epi32(cdgh, cdgh_in);
    /* Back to (a, b, c, d), (e, f, g, h). */
    t = _mm_shuffle_epi32(abef, 0x1B);
    cdgh = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)h, _mm_blend_epi16(t, cdgh, 0xF0));
    _mm_storeu_si128((__m128i *)(h + 4), _mm_alignr_epi8(cdgh, t, 8));
}

/* Four rounds of SHA-1 (group i of 20, function f): e from the words and
 * the state before the previous group (sha1nexte rotates it), then rnds4. */
#define SHA1_GROUP(i, f)                                                              \
    do {                                                                              \
        if ((i) >= 4) {                                                               \
            w[i] = _mm_sha1msg2_epu32(                                                \
                _mm_xor_si128(_mm_sha1msg1_epu32(w[(i) - 4], w[(i) - 3]), w[(i) - 2]), \
                w[(i) - 1]);                                                          \
        }                                                                             \
        e = (i) == 0 ? _mm_add_epi32(e_in, w[0]) : _mm_sha1nexte_epu32(before, w[i]); \
        before = abcd;                                                                \
        abcd = _mm_sha1rnds4_epu32(abcd, e, f);                                       \
    } while (0)

__attribute__((target("sha,sse4.1,ssse3"))) static void
sha1_block_ni(uint32_t *h, const unsigned char *p)
{
    __m128i w[20], abcd, abcd_in, e, e_in, before;
    int i;
    abcd = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)h), 0x1B);
    e_in = _mm_set_epi32((int)h[4], 0, 0, 0);
    abcd_in = abcd;
    before = abcd;
    for (i = 0; i < 4; i++) {
        w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), REVERSE_BYTES);
    }
    SHA1_GROUP(0, 0);
    SHA1_GROUP(1, 0);
    SHA1_GROUP(2, 0);
    SHA1_GROUP(3, 0);
    SHA1_GROUP(4, 0);
    SHA1_GROUP(5, 1);
    SHA1_GROUP(6, 1);
    SHA1_GROUP(7, 1);
    SHA1_GROUP(8, 1);
    SHA1_GROUP(9, 1);
    SHA1_GROUP(10, 2);
    SHA1_GROUP(11, 2);
    SHA1_GROUP(12, 2);
    SHA1_GROUP(13, 2);
    SHA1_GROUP(14, 2);
    SHA1_GROUP(15, 3);
    SHA1_GROUP(16, 3);
    SHA1_GROUP(17, 3);
    SHA1_GROUP(18, 3);
    SHA1_GROUP(19, 3);
    e = _mm_sha1nexte_epu32(before, e_in);
    abcd = _mm_add_epi32(abcd, abcd_in);
    _mm_storeu_si128((__m128i *)h, _mm_shuffle_epi32(abcd, 0x1B));
    h[4] = (uint32_t)_mm_extract_epi32(e, 3);
}
#undef SHA1_GROUP
#endif

static void
sha1_block(uint32_t *h, const unsigned char *p)
{
    uint32_t w[80], a, b, c, d, e, f, k, t;
    int i;
#ifdef WSHUB_SHA_NI
    if (use_sha_ni) {
        sha1_block_ni(h, p);
        return;
    }
#endif
    for (i = 0; i < 16; i++) {
        w[i] = load_be32(p + 4 * i);
    }
    for (; i < 80; i++) {
        t = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
        w[i] = ROL32(t, 1);
    }
    a = h[0];
    b = h[1];
    c = h[2];
    d = h[3];
    e = h[4];
    for (i = 0; i < 80; i++) {
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        }
        else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        }
        else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        }
        else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        t = ROL32(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = ROL32(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

/* The first 32 bits of the fractional parts of the cube roots of the
 * first 64 primes (FIPS 180-4 section 4.2.2). */
static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

static void
sha256_block(uint32_t *h, const unsigned char *p)
{
    uint32_t w[64], s[8], t1, t2, x;
    int i;
#ifdef WSHUB_SHA_NI
    if (use_sha_ni) {
        sha256_block_ni(h, p);
        return;
    }
#endif
    for (i = 0; i < 16; i++) {
        w[i] = load_be32(p + 4 * i);
    }
    for (; i < 64; i++) {
        x = w[i - 15];
        t1 = ROR32(x, 7) ^ ROR32(x, 18) ^ (x >> 3);
        x = w[i - 2];
        t2 = ROR32(x, 17) ^ ROR32(x, 19) ^ (x >> 10);
        w[i] = w[i - 16] + t1 + w[i - 7] + t2;
    }
    memcpy(s, h, sizeof s);
    for (i = 0; i < 64; i++) {
        x = s[4];
        t1 = s[7] + (ROR32(x, 6) ^ ROR32(x, 11) ^ ROR32(x, 25)) + ((x & s[5]) ^ (~x & s[6])) +
             sha256_k[i] + w[i];
        x = s[0];
        t2 = (ROR32(x, 2) ^ ROR32(x, 13) ^ ROR32(x, 22)) + ((x & s[1]) ^ (x & s[2]) ^ (s[1] & s[2]));
        s[7] = s[6];
        s[6] = s[5];
        s[5] = s[4];
        s[4] = s[3] + t1;
        s[3] = s[2];
        s[2] = s[1];
        s[1] = s[0];
        s[0] = t1 + t2;
    }
    for (i = 0; i < 8; i++) {
        h[i] += s[i];
    }
}

/* A running SHA-1 or SHA-256: its state, the partial block, the length. */
typedef struct {
    uint32_t h[8];
    unsigned char buf[64];
    size_t used;
    uint64_t total;
    void (*block)(uint32_t *, const unsigned char *);
} digest_ctx;

static void
digest_update(digest_ctx *c, const unsigned char *p, size_t n)
{
    c->total += n;
    if (c->used) {
        size_t take = 64 - c->used;
        if (take > n) {
            take = n;
        }
        memcpy(c->buf + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used < 64) {
            return;
        }
        c->block(c->h, c->buf);
        c->used = 0;
    }
    for (; n >= 64; p += 64, n -= 64) {
        c->block(c->h, p);
    }
    memcpy(c->buf, p, n);
    c->used = n;
}

/* The padding (a 1 bit, zeros, the length in bits); the digest is then
 * the state words, big-endian. */
static void
digest_final(digest_ctx *c)
{
    uint64_t bits = c->total * 8;
    int i;
    c->buf[c->used++] = 0x80;
    if (c->used > 56) {
        memset(c->buf + c->used, 0, 64 - c->used);
        c->block(c->h, c->buf);
        c->used = 0;
    }
    memset(c->buf + c->used, 0, 56 - c->used);
    for (i = 0; i < 8; i++) {
        c->buf[63 - i] = (unsigned char)(bits >> (8 * i));
    }
    c->block(c->h, c->buf);
}

static const char b64_standard[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64_urlsafe[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Base64 of n bytes into out (4 * ((n + 2) / 3) bytes at most); with pad
 * == 0 no trailing '='.  Returns the length written. */
static Py_ssize_t
base64_encode(const unsigned char *in, size_t n, char *out, const char *alphabet, int pad)
{
    char *o = out;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        *o++ = alphabet[(v >> 18) & 63];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        *o++ = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = alphabet[(v >> 18) & 63];
        *o++ = alphabet[(v >> 12) & 63];
        if (pad) {
            *o++ = '=';
            *o++ = '=';
        }
    }
    else if (n - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        *o++ = alphabet[(v >> 18) & 63];
        *o++ = alphabet[(v >> 12) & 63];
        *o++ = alphabet[(v >> 6) & 63];
        if (pad) {
            *o++ = '=';
        }
    }
    return o - out;
}

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

static PyObject *
accept_key(PyObject *self, PyObject *key)
{
    static const uint32_t sha1_init[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476,
                                          0xc3d2e1f0};
    digest_ctx c;
    unsigned char digest[20];
    char out[28];
    int i;
    if (!PyUnicode_Check(key)) {
        PyErr_Format(PyExc_TypeError, "accept_key() argument must be str, not %.80s",
                     Py_TYPE(key)->tp_name);
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(key)) {
        /* The same UnicodeEncodeError as key.encode("ascii"). */
        PyObject *encoded = PyUnicode_AsASCIIString(key);
        Py_XDECREF(encoded);
        if (encoded != NULL) {
            PyErr_SetString(PyExc_ValueError, "not an ASCII key");
        }
        return NULL;
    }
    memcpy(c.h, sha1_init, sizeof sha1_init);
    c.used = 0;
    c.total = 0;
    c.block = sha1_block;
    digest_update(&c, PyUnicode_1BYTE_DATA(key), (size_t)PyUnicode_GET_LENGTH(key));
    digest_update(&c, (const unsigned char *)ws_guid, sizeof ws_guid - 1);
    digest_final(&c);
    for (i = 0; i < 5; i++) {
        store_be32(digest + 4 * i, c.h[i]);
    }
    return PyBytes_FromStringAndSize(out, base64_encode(digest, 20, out, b64_standard, 1));
}

static PyObject *
hmac_sha256_states(PyObject *self, PyObject *arg)
{
    static const uint32_t sha256_init[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                            0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    Py_buffer view;
    unsigned char block[64], states[64];
    uint32_t h[8];
    int pass, i;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (view.len != 64) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "the key block must be 64 bytes");
        return NULL;
    }
    for (pass = 0; pass < 2; pass++) {
        unsigned char x = pass == 0 ? 0x36 : 0x5c; /* ipad, opad */
        for (i = 0; i < 64; i++) {
            block[i] = ((const unsigned char *)view.buf)[i] ^ x;
        }
        memcpy(h, sha256_init, sizeof h);
        sha256_block(h, block);
        for (i = 0; i < 8; i++) {
            store_be32(states + 32 * pass + 4 * i, h[i]);
        }
    }
    PyBuffer_Release(&view);
    return PyBytes_FromStringAndSize((const char *)states, 64);
}

/* set_sha_ni(enabled) -> bool: whether the digests now use the CPU's SHA
 * instructions (never where it has none).  For the tests, which check both
 * block functions against hashlib. */
static PyObject *
set_sha_ni(PyObject *self, PyObject *arg)
{
    int enabled = PyObject_IsTrue(arg);
    if (enabled < 0) {
        return NULL;
    }
#ifdef WSHUB_SHA_NI
    use_sha_ni = enabled && have_sha_ni;
    return PyBool_FromLong(use_sha_ni);
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *
hmac_sha256_b64url(PyObject *self, PyObject *args)
{
    Py_buffer states, message;
    digest_ctx c;
    unsigned char inner[32], outer[32];
    char out[44];
    int i;
    if (!PyArg_ParseTuple(args, "y*y*:hmac_sha256_b64url", &states, &message)) {
        return NULL;
    }
    if (states.len != 64) {
        PyBuffer_Release(&states);
        PyBuffer_Release(&message);
        PyErr_SetString(PyExc_ValueError, "the states must be 64 bytes");
        return NULL;
    }
    c.block = sha256_block;
    for (i = 0; i < 8; i++) {
        c.h[i] = load_be32((const unsigned char *)states.buf + 4 * i);
    }
    c.used = 0;
    c.total = 64; /* the key block, already in the state */
    digest_update(&c, message.buf, (size_t)message.len);
    digest_final(&c);
    for (i = 0; i < 8; i++) {
        store_be32(inner + 4 * i, c.h[i]);
        c.h[i] = load_be32((const unsigned char *)states.buf + 32 + 4 * i);
    }
    PyBuffer_Release(&states);
    PyBuffer_Release(&message);
    c.used = 0;
    c.total = 64;
    digest_update(&c, inner, 32);
    digest_final(&c);
    for (i = 0; i < 8; i++) {
        store_be32(outer + 4 * i, c.h[i]);
    }
    return PyUnicode_DecodeASCII(out, base64_encode(outer, 32, out, b64_urlsafe, 0), NULL);
}

#ifdef WSHUB_HAVE_SEND
/* One send() that never blocks and never raises SIGPIPE: the bytes the
 * kernel took (0 when it would block), or -1 on any other error. */
static Py_ssize_t
send_some(int fd, const void *buf, Py_ssize_t len, int more)
{
    ssize_t n;
    int flags = MSG_DONTWAIT;
#ifdef MSG_MORE
    if (more) {
        flags |= MSG_MORE;
    }
#endif
#ifdef MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif
    do {
        n = send(fd, buf, (size_t)len, flags);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
    }
    return (Py_ssize_t)n;
}

/* send_nowait(fd, data, more=False) -> int: send_some() of data.  On -1
 * the caller hands everything to its transport, which meets the same error
 * and reports it its own way. */
static PyObject *
send_nowait(PyObject *self, PyObject *args)
{
    int fd, more = 0;
    Py_buffer data;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "iy*|p:send_nowait", &fd, &data, &more)) {
        return NULL;
    }
    n = send_some(fd, data.buf, data.len, more);
    PyBuffer_Release(&data);
    return PyLong_FromSsize_t(n);
}

/* send_each(fds, data) -> list[(i, sent)]: the same bytes to every socket
 * of the sequence fds, back to back, as send_nowait does for one; only the
 * sockets that did not take them whole are listed (their index in fds, and
 * what send_nowait would have answered). */
static PyObject *
send_each(PyObject *self, PyObject *args)
{
    PyObject *fds, *seq, *out = NULL;
    Py_buffer data;
    Py_ssize_t i, n;
    if (!PyArg_ParseTuple(args, "Oy*:send_each", &fds, &data)) {
        return NULL;
    }
    seq = PySequence_Fast(fds, "send_each: fds must be a sequence");
    if (seq == NULL) {
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL) {
        goto done;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    for (i = 0; i < n; i++) {
        long fd = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        Py_ssize_t sent;
        if (fd == -1 && PyErr_Occurred()) {
            Py_CLEAR(out);
            goto done;
        }
        sent = send_some((int)fd, data.buf, data.len, 0);
        if (sent != data.len) {
            PyObject *item = Py_BuildValue("(nn)", i, sent);
            if (item == NULL || PyList_Append(out, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(out);
                goto done;
            }
            Py_DECREF(item);
        }
    }
done:
    Py_XDECREF(seq);
    PyBuffer_Release(&data);
    return out;
}
#endif

#ifdef WSHUB_HAVE_ACCEPT
/* The peer's address as CPython's socket module gives it: (host, port) for
 * IPv4, (host, port, flowinfo, scope_id) for IPv6. */
static PyObject *
peer_address(const struct sockaddr_storage *addr)
{
    char host[INET6_ADDRSTRLEN];
    if (addr->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)addr;
        if (inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(si)", host, (int)ntohs(a->sin_port));
    }
    if (addr->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)addr;
        if (inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host)) == NULL) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        return Py_BuildValue("(siII)", host, (int)ntohs(a->sin6_port),
                             (unsigned int)ntohl(a->sin6_flowinfo),
                             (unsigned int)a->sin6_scope_id);
    }
    Py_RETURN_NONE;
}

/* accept_burst(fd, limit) -> ([(fd, peer)], errno): see the top. */
static PyObject *
accept_burst(PyObject *self, PyObject *args)
{
    int lfd, limit, i, err = 0;
    PyObject *out;
    if (!PyArg_ParseTuple(args, "ii:accept_burst", &lfd, &limit)) {
        return NULL;
    }
    out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < limit; i++) {
        struct sockaddr_storage addr;
        socklen_t len = sizeof(addr);
        PyObject *peer, *item;
        int fd = accept4(lfd, (struct sockaddr *)&addr, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) {
                i--;
                continue;
            }
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                err = errno;
            }
            break;
        }
        peer = peer_address(&addr);
        item = peer == NULL ? NULL : Py_BuildValue("(iN)", fd, peer);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_ssize_t k, n = PyList_GET_SIZE(out);
            Py_XDECREF(item);
            close(fd);
            for (k = 0; k < n; k++) {
                close((int)PyLong_AsLong(PyTuple_GET_ITEM(PyList_GET_ITEM(out, k), 0)));
            }
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(item);
    }
    return Py_BuildValue("(Ni)", out, err);
}
#endif

static PyMethodDef methods[] = {
    {"accept_key", accept_key, METH_O,
     "accept_key(key) -> bytes: Sec-WebSocket-Accept for an ASCII Sec-WebSocket-Key."},
    {"apply_mask", apply_mask, METH_VARARGS,
     "apply_mask(data, mask) -> bytes: XOR with a 4-byte mask (RFC 6455 5.3)."},
    {"hmac_sha256_b64url", hmac_sha256_b64url, METH_VARARGS,
     "hmac_sha256_b64url(states, message) -> str: HMAC-SHA256, base64url without '='."},
    {"hmac_sha256_states", hmac_sha256_states, METH_O,
     "hmac_sha256_states(key_block) -> bytes: the keyed states of HMAC-SHA256."},
    {"set_sha_ni", set_sha_ni, METH_O,
     "set_sha_ni(enabled) -> bool: use the CPU's SHA instructions for the digests (if it has them)."},
    {"parse_upgrade_head", parse_upgrade_head, METH_VARARGS,
     "parse_upgrade_head(data, max_size, max_fields) -> (target, headers, end) or None."},
#ifdef WSHUB_HAVE_SEND
    {"send_nowait", send_nowait, METH_VARARGS,
     "send_nowait(fd, data, more=False) -> int: bytes sent without blocking, 0 if none, -1 on error."},
    {"send_each", send_each, METH_VARARGS,
     "send_each(fds, data) -> [(i, sent)]: send_nowait to each; those not sent whole."},
#endif
#ifdef WSHUB_HAVE_ACCEPT
    {"accept_burst", accept_burst, METH_VARARGS,
     "accept_burst(fd, limit) -> ([(fd, peer)], errno): accept non-blocking, close-on-exec."},
#endif
    {"scan_frames", scan_frames, METH_VARARGS,
     "scan_frames(data, pos, max_payload, decoder=None) -> (events, pos): decode simple "
     "frames (compressed ones too with a codec's message_decoder)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "wshub._speedups",
    "Optional C accelerator for wshub's frame reader.", -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    PyObject *m;
    if (PyType_Ready(&PayloadBufferType) < 0 || init_known_names() < 0) {
        return NULL;
    }
#ifdef WSHUB_X86_SIMD
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
#endif
#ifdef WSHUB_SHA_NI
    have_sha_ni = __builtin_cpu_supports("sha") && __builtin_cpu_supports("sse4.1") &&
                  __builtin_cpu_supports("ssse3");
    use_sha_ni = have_sha_ni;
#endif
    m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    /* Which unmasking loop this CPU runs (for diagnostics and tests). */
#ifdef WSHUB_X86_SIMD
    if (PyModule_AddStringConstant(m, "simd", have_avx2 ? "avx2" : "sse2") < 0) {
#else
    if (PyModule_AddStringConstant(m, "simd", "none") < 0) {
#endif
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&PayloadBufferType);
    if (PyModule_AddObject(m, "PayloadBuffer", (PyObject *)&PayloadBufferType) < 0) {
        Py_DECREF(&PayloadBufferType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
