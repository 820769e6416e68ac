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
 * xff_client(value, trusted) -> str | None: the client an X-Forwarded-For
 * value names: its right-most hop not in trusted (a tuple or a set of str;
 * None: every address is trusted), else its left-most, each hop stripped of spaces and
 * tabs. None when a hop it comes to is not a dotted quad (an IPv6 address, a
 * malformed value): the caller's Python then reads the value, as it reads
 * every value with CIDR ranges in forwarded_allow_ips. Behind a proxy this
 * runs on every request; in Python (a reverse search, a slice, a strip and a
 * check per hop) it cost ~1,500 instructions for two hops, here ~400.
 *
 * line_end(head) -> int: where the first CRLF in head starts, or -1, as
 * head.find(b"\r\n") gives. bytes.find takes its arguments as a tuple and
 * parses them: ~1,000 instructions a call, on every request's head
 * (RequestReader._check_head); memchr here, ~100.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Whether at[0:size] is a dotted quad (is_ipv4's rule). */
static int ipv4_span(const Py_UCS1 *at, Py_ssize_t size) {
    if (size < 7 || size > 15) {
        return 0;
    }
    int dots = 0, digits = 0, value = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        Py_UCS1 c = at[i];
        if (c >= '0' && c <= '9') {
            if (digits && value == 0) {
                return 0; /* a leading zero */
            }
            value = value * 10 + (c - '0');
            digits++;
            if (value > 255) {
                return 0;
            }
        } else if (c == '.' && digits) {
            dots++;
            digits = value = 0;
        } else {
            return 0;
        }
    }
    return dots == 3 && digits > 0;
}

static PyObject *is_ipv4(PyObject *module, PyObject *text) {
    (void)module;
    if (!PyUnicode_Check(text)) {
        return PyErr_Format(PyExc_TypeError, "is_ipv4() takes a str, not %.100s",
                            Py_TYPE(text)->tp_name);
    }
    /* (Any character past Latin-1 makes a wider kind: not an address.) */
    if (PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND &&
        ipv4_span(PyUnicode_1BYTE_DATA(text), PyUnicode_GET_LENGTH(text))) {
        Py_RETURN_TRUE;
    }
    Py_RETURN_FALSE;
}

/* Whether the address at[0:size] is in trusted: a tuple of str compared
 * byte by byte (the few addresses of forwarded_allow_ips: no str made and
 * hashed for a hop), or a set (many addresses), looked up. */
static int is_trusted(PyObject *trusted, const Py_UCS1 *at, Py_ssize_t size) {
    if (PyTuple_CheckExact(trusted)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(trusted); i++) {
            PyObject *item = PyTuple_GET_ITEM(trusted, i);
            if (PyUnicode_Check(item) && PyUnicode_KIND(item) == PyUnicode_1BYTE_KIND &&
                PyUnicode_GET_LENGTH(item) == size &&
                memcmp(PyUnicode_1BYTE_DATA(item), at, (size_t)size) == 0) {
                return 1;
            }
        }
        return 0;
    }
    PyObject *hop = PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, at, size);
    if (hop == NULL) {
        return -1;
    }
    int known = PySet_Contains(trusted, hop);
    Py_DECREF(hop);
    return known;
}

static PyObject *xff_client(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyUnicode_Check(args[0]) ||
        (args[1] != Py_None && !PyAnySet_Check(args[1]) && !PyTuple_CheckExact(args[1]))) {
        PyErr_SetString(PyExc_TypeError,
                        "xff_client(value: str, trusted: tuple[str, ...] | set[str] | None)");
        return NULL;
    }
    PyObject *text = args[0];
    PyObject *trusted = args[1];
    if (PyUnicode_KIND(text) != PyUnicode_1BYTE_KIND) {
        Py_RETURN_NONE;
    }
    const Py_UCS1 *s = PyUnicode_1BYTE_DATA(text);
    Py_ssize_t end = PyUnicode_GET_LENGTH(text);
    for (;;) {
        Py_ssize_t comma = end - 1;
        while (comma >= 0 && s[comma] != ',') {
            comma--;
        }
        Py_ssize_t a = comma + 1, b = end;
        while (a < b && (s[a] == ' ' || s[a] == '\t')) {
            a++;
        }
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) {
            b--;
        }
        if (!ipv4_span(s + a, b - a)) {
            Py_RETURN_NONE; /* not a dotted quad: the caller's slower way */
        }
        /* None: everyone is trusted. */
        int known = comma < 0 ? 0 : trusted == Py_None ? 1 : is_trusted(trusted, s + a, b - a);
        if (known < 0) {
            return NULL;
        }
        if (!known) {
            /* Not a trusted proxy, or the left-most: the client. */
            return PyUnicode_Substring(text, a, b);
        }
        end = comma; /* a trusted proxy: the hop left of it */
    }
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
    {"xff_client", (PyCFunction)(void (*)(void))xff_client, METH_FASTCALL,
     "xff_client(value, trusted): the client an X-Forwarded-For value names, or None "
     "when a hop looked at is not a dotted quad."},
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
