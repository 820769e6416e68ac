/* prefork.http._addr: whether a str is a dotted-quad IPv4 address.
 *
 * Behind a proxy, every request's X-Forwarded-For (or Forwarded) names a
 * client address, which is checked before it goes into the scope or
 * environ. ipaddress parses one in ~2 us; the same walk as Python compiled
 * by mypyc cost ~1,000 instructions on a typical address, as each character
 * is first a one-character str. Here it is the str's own bytes: ~60
 * instructions. Only the compiled build (PREFORK_COMPILE=1)
 * builds it; forwarded.py keeps the pattern for a pure Python install, and
 * tests/unit/test_forwarded.py holds all of them to ipaddress's answers.
 *
 * is_ipv4(text) -> bool: decimal octets 0-255 without leading zeros, four of
 * them, three dots, nothing else (ASCII digits only), as ipaddress accepts.
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

static PyMethodDef methods[] = {
    {"is_ipv4", is_ipv4, METH_O, "Whether text is a dotted-quad IPv4 address."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_addr",
    .m_doc = "Whether a str is a dotted-quad IPv4 address.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__addr(void) {
    return PyModule_Create(&module_def);
}
