/* Optional C accelerator for wshub's hot loop.
 *
 * Two functions, each with a pure-Python twin in wshub/protocol that
 * behaves identically (the test suite runs both; WSHUB_NO_EXTENSIONS=1
 * forces the pure path):
 *
 *   apply_mask(data, mask) -> bytes
 *       XOR data with the 4-byte mask repeated (RFC 6455 section 5.3).
 *
 *   scan_frames(data, pos, max_payload) -> (events, pos)
 *       Starting at pos, turn every *simple* frame into an event: a complete,
 *       final (FIN), masked text or binary frame, without RSV bits, whose
 *       payload fits max_payload (< 1: no limit).  Text must be valid UTF-8
 *       and becomes str; binary becomes bytes.  Stops before the first frame
 *       that is anything else (incomplete, fragmented, control, RSV, invalid
 *       UTF-8, too big, unmasked ...), leaving it to the Python state
 *       machine, which then reports the same events or errors it always does.
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
 *   PayloadBuffer(total, initial, mask)
 *       The payload of one large frame, read straight into the bytes object
 *       that becomes the message: no chunk list, no join, unmasked in place.
 *       Its pure-Python twin is wshub.protocol.frames._PayloadBufferPy.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <string.h>

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

static PyObject *
scan_frames(PyObject *self, PyObject *args)
{
    Py_buffer view;
    Py_ssize_t pos;
    long long max_payload;
    PyObject *events, *result;
    const unsigned char *buf;
    Py_ssize_t end;
    /* Scratch space for unmasking text before decoding it. */
    unsigned char small[512];

    if (!PyArg_ParseTuple(args, "y*nL:scan_frames", &view, &pos, &max_payload)) {
        return NULL;
    }
    events = PyList_New(0);
    if (events == NULL) {
        PyBuffer_Release(&view);
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

        if ((b0 & 0xF0) != 0x80 || (opcode != 1 && opcode != 2) || !(b1 & 0x80)) {
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
        if (opcode == 2) {
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
    result = Py_BuildValue("(Nn)", events, pos);
    return result;

error:
    PyBuffer_Release(&view);
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

static PyMethodDef methods[] = {
    {"apply_mask", apply_mask, METH_VARARGS,
     "apply_mask(data, mask) -> bytes: XOR with a 4-byte mask (RFC 6455 5.3)."},
    {"parse_upgrade_head", parse_upgrade_head, METH_VARARGS,
     "parse_upgrade_head(data, max_size, max_fields) -> (target, headers, end) or None."},
    {"scan_frames", scan_frames, METH_VARARGS,
     "scan_frames(data, pos, max_payload) -> (events, pos): decode simple frames."},
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
