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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

static void
xor_mask(const unsigned char *src, unsigned char *dst, Py_ssize_t n,
         const unsigned char mask[4])
{
    uint32_t m32;
    uint64_t m64;
    Py_ssize_t i = 0;
    memcpy(&m32, mask, 4);
    m64 = ((uint64_t)m32 << 32) | m32;
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

static PyMethodDef methods[] = {
    {"apply_mask", apply_mask, METH_VARARGS,
     "apply_mask(data, mask) -> bytes: XOR with a 4-byte mask (RFC 6455 5.3)."},
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
    return PyModule_Create(&module);
}
