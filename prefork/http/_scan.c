/* prefork.http._scan: small scans of the request path, in C.
 *
 * Each replaces a Python call whose overhead is many times the scan itself;
 * only the compiled build (PREFORK_COMPILE=1) builds this module, and
 * prefork.http.scan picks these or its Python versions (tests/unit/test_scan.py
 * holds the two together).
 *
 * is_ipv4(text) -> bool: decimal octets 0-255 without leading zeros, four of
 * them, three dots, nothing else (ASCII digits only), as ipaddress accepts.
 * Behind a proxy, every request's X-Forwarded-For (or Forwarded) names a
 * client address, checked before it goes into the scope or environ.
 * ipaddress parses one in ~2 us; the same walk as Python compiled by mypyc
 * cost ~1,000 instructions on a typical address, as each character is first
 * a one-character str. Here it is the str's own bytes: ~60 instructions.
 *
 * line_end(head) -> int: where the first CRLF in head starts, or -1, as
 * head.find(b"\r\n") gives. bytes.find takes its arguments as a tuple and
 * parses them: ~1,000 instructions a call, on every request's head
 * (RequestReader._check_head); memchr here, ~100.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *is_ipv4(PyObject *module, PyObject *text) {
    (void)module;
    if (!PyUnicode_Check(text)) {
        return PyErr_Format(PyExc_TypeError, "is_ipv4() takes a str, not %.100s",
                            Py_TYPE(text)->tp_name);
    }
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    /* (Any character past Latin-1 makes a wider kind: not an address.) */
    if (size < 7 || size > 15 || PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND) {
        Py_RETURN_FALSE;
    }
    const Py_UCS1 *at = PyUnicode_1BYTE_DATA(text);
    int dots = 0, digits = 0, value = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        Py_UCS1 c = at[i];
        if (c >= '0' && c <= '9') {
            if (digits && value == 0) {
                Py_RETURN_FALSE; /* a leading zero */
            }
            value = value * 10 + (c - '0');
            digits++;
            if (value > 255) {
                Py_RETURN_FALSE;
            }
        } else if (c == '.' && digits) {
            dots++;
            digits = value = 0;
        } else {
            Py_RETURN_FALSE;
        }
    }
    if (dots == 3 && digits > 0) {
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

static PyObject *line_end(PyObject *module, PyObject *buf) {
    (void)module;
    if (!PyBytes_CheckExact(buf)) {
        return PyErr_Format(PyExc_TypeError, "line_end() takes bytes, not %.100s",
                            Py_TYPE(buf)->tp_name);
    }
    const char *start = PyBytes_AS_STRING(buf);
    Py_ssize_t size = PyBytes_GET_SIZE(buf);
    const char *at = start;
    const char *last = start + size - 1; /* a CR here has no LF after it */
    while (size >= 2 && at < last) {
        const char *cr = memchr(at, '\r', (size_t)(last - at));
        if (cr == NULL) {
            break;
        }
        if (cr[1] == '\n') {
            return PyLong_FromSsize_t(cr - start);
        }
        at = cr + 1;
    }
    return PyLong_FromLong(-1);
}

static PyMethodDef methods[] = {
    {"is_ipv4", is_ipv4, METH_O, "Whether text is a dotted-quad IPv4 address."},
    {"line_end", line_end, METH_O,
     "line_end(head): where the first CRLF in head starts, or -1 (head.find(b'\\r\\n'))."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_scan",
    .m_doc = "Small scans of the request path, in C.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__scan(void) {
    return PyModule_Create(&module_def);
}
