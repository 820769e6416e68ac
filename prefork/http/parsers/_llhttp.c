/* prefork.http.parsers._llhttp: one request head through llhttp in one call.
 *
 * Why not httptools' binding alone: it calls back into Python for every span
 * llhttp reports (the target, each field's name, each value), and joins
 * name and value in Python before our on_header gets them. On a ~600-byte
 * head of 9 fields that is ~20 Python-level calls and ~14,000 instructions,
 * three times what llhttp itself spends on the head. Here llhttp's callbacks
 * are C functions that only note where each span is; the Python objects are
 * made once, at the end, straight from the buffer.
 *
 * What it gives is what HttptoolsHeadParser gives for the same bytes, with
 * the field names lower-cased (a differential test holds the two together):
 * the same llhttp release, in its default (strict) mode, with the same
 * callbacks, a field's value with its trailing OWS dropped, a fresh parser
 * per head. Only the compiled build (PREFORK_COMPILE=1) builds it; see
 * llhttp_parser.py for its use.
 *
 * parse(buf, whole, known) returns:
 *   - (method, target, version, [(name, value), ...], known, present) for a
 *     head it read, the names lower-cased; known, when asked for: the fields
 *     named in configure() as {name: value decoded as Latin-1}, or None when
 *     one of them repeats (None too when not asked for); present: with known,
 *     the mask of those fields in the head (bit i: the i-th name given to
 *     configure()), so that the server looks up only those there; else -1;
 *   - whole=False, buf one head: the llhttp error text (a str) when llhttp
 *     refuses it;
 *   - whole=True: None unless buf is exactly one whole request (no second
 *     one, no upgrade, no chunked body, a Content-Length body all there),
 *     or llhttp refuses it;
 *   - None when it cannot say: more than MAX_FIELDS fields, or a span
 *     llhttp reported in pieces that are not adjacent. The caller then uses
 *     httptools' binding, which handles both.
 * A target that is not ASCII raises UnicodeDecodeError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "llhttp.h"

/* More fields than this go to httptools' binding (and then, past the
 * configured limit, to the reader's 431). */
#define MAX_FIELDS 64

typedef struct {
    const char *at;
    size_t len;
} span_t;

typedef struct {
    span_t url;
    span_t names[MAX_FIELDS];
    span_t values[MAX_FIELDS];
    int count;          /* fields with a value, in names/values */
    int have_name;      /* names[count] holds a name whose value has not come */
    int have_value;     /* values[count] holds (part of) that value */
    int overflow;       /* a span we cannot hold: the caller's fallback */
    int headers_done;
    int message_done;
} state_t;

/* A span that continues the last one (llhttp reports a span in pieces only
 * at the end of a buffer, which a whole head never has): joined when the
 * pieces are adjacent, else given up. */
static int extend(state_t *st, span_t *span, const char *at, size_t len) {
    if (span->at == NULL) {
        span->at = at;
        span->len = len;
    } else if (span->at + span->len == at) {
        span->len += len;
    } else {
        st->overflow = 1;
        return -1;
    }
    return 0;
}

/* As httptools: a field is passed on once its value has begun and the next
 * name (or the end of the head) arrives. */
static void close_field(state_t *st) {
    if (st->have_name && st->have_value) {
        st->count++;
        st->have_name = st->have_value = 0;
    }
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
    state_t *st = (state_t *)p->data;
    return extend(st, &st->url, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
    state_t *st = (state_t *)p->data;
    close_field(st);
    if (st->count >= MAX_FIELDS) {
        st->overflow = 1;
        return -1;
    }
    if (!st->have_name) {
        st->names[st->count].at = NULL;
        st->values[st->count].at = NULL;
        st->have_name = 1;
    }
    return extend(st, &st->names[st->count], at, len);
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
    state_t *st = (state_t *)p->data;
    st->have_value = 1;
    return extend(st, &st->values[st->count], at, len);
}

static int on_headers_complete(llhttp_t *p) {
    state_t *st = (state_t *)p->data;
    close_field(st);
    st->headers_done = 1;
    /* httptools' answer: with an upgrade, no body. */
    return p->upgrade ? 1 : 0;
}

static int on_message_begin(llhttp_t *p) {
    /* A second request in a whole buffer: not one request (httptools'
     * parser stops at the second target, which always follows). */
    state_t *st = (state_t *)p->data;
    return st->message_done ? -1 : 0;
}

static int on_message_complete(llhttp_t *p) {
    state_t *st = (state_t *)p->data;
    st->message_done = 1;
    return 0;
}

static int on_chunk_header(llhttp_t *p) {
    /* Only a whole buffer gets this far into a chunked body: the reader
     * frames chunked bodies itself. */
    (void)p;
    return -1;
}

static llhttp_settings_t settings;

/* Field names come back lower-cased (what every consumer wants: ASGI's
 * headers, the dicts by lower-cased name), and the common ones as one shared
 * object each: no new bytes object per field, and its hash, kept in the
 * object, is computed once for every dict lookup of the worker's life. */
static const char *const common_names[] = {
    "host", "user-agent", "accept", "accept-language", "accept-encoding", "cookie",
    "connection", "content-length", "content-type", "transfer-encoding", "upgrade", "expect",
    "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip",
    "x-request-id", "traceparent", "tracestate", "referer", "origin", "authorization",
    "cache-control", "pragma", "if-none-match", "if-modified-since", "te", "dnt",
    "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest", "sec-fetch-user",
    "upgrade-insecure-requests", "sec-websocket-key", "sec-websocket-version",
    "sec-websocket-extensions", "sec-websocket-protocol", "content-encoding", "range",
    "priority", "x-amzn-trace-id", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "via",
    "content-location", "proxy-authorization", "if-unmodified-since", "if-range", "max-forwards",
    "content-range",
};
#define COMMON (sizeof(common_names) / sizeof(common_names[0]))
#define NAME_BUF 64
#define PER_LENGTH 8
static PyObject *common_objects[COMMON];
/* For the names the server itself reads (configure()), the dict key (str)
 * and the bit of the present mask. */
static PyObject *server_texts[COMMON];
static long long server_bits[COMMON];
/* Bits a mask holds (a long long, kept non-negative). */
#define MAX_SERVER_FIELDS 62
/* For the server's fields, the last value given out (str): a value that
 * repeats from head to head (Host, X-Forwarded-Proto, Connection, as one
 * client's or one proxy's requests carry them) is the same object again,
 * its hash kept in it: no str made and freed for it, and no hash computed
 * where the server looks it up (the Host check's set). Values up to
 * REUSE_MAX bytes: a long one is not held for the worker's life. */
static PyObject *last_values[COMMON];
#define REUSE_MAX 128
/* The common names of each length, by index (-1 ends a row). */
static signed char by_length[NAME_BUF][PER_LENGTH];

static PyObject *lower_name(const char *at, size_t len, int *common) {
    char lower[NAME_BUF];
    *common = -1;
    if (len >= NAME_BUF) {
        PyObject *name = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);
        if (name != NULL) {
            char *out = PyBytes_AS_STRING(name);
            for (size_t i = 0; i < len; i++) {
                out[i] = (char)Py_TOLOWER((unsigned char)at[i]);
            }
        }
        return name;
    }
    for (size_t i = 0; i < len; i++) {
        lower[i] = (char)Py_TOLOWER((unsigned char)at[i]);
    }
    for (int k = 0; k < PER_LENGTH && by_length[len][k] >= 0; k++) {
        PyObject *known = common_objects[(int)by_length[len][k]];
        if (memcmp(PyBytes_AS_STRING(known), lower, len) == 0) {
            Py_INCREF(known);
            *common = by_length[len][k];
            return known;
        }
    }
    return PyBytes_FromStringAndSize(lower, (Py_ssize_t)len);
}

/* configure(names): the lower-cased names (str) of the fields the server
 * reads; parse() then also gives them as a dict. Each must be one of the
 * common names above (a ValueError says which is not). */
static PyObject *configure(PyObject *module, PyObject *names) {
    (void)module;
    PyObject *seq = PySequence_Fast(names, "configure() takes a sequence of str");
    if (seq == NULL) {
        return NULL;
    }
    if (PySequence_Fast_GET_SIZE(seq) > MAX_SERVER_FIELDS) {
        Py_DECREF(seq);
        return PyErr_Format(PyExc_ValueError, "configure() takes at most %d names",
                            MAX_SERVER_FIELDS);
    }
    /* All found before any is changed: a refused call leaves things as they were. */
    PyObject *texts[COMMON] = {NULL};
    long long bits[COMMON] = {0};
    for (Py_ssize_t n = 0; n < PySequence_Fast_GET_SIZE(seq); n++) {
        PyObject *text = PySequence_Fast_GET_ITEM(seq, n);
        Py_ssize_t len;
        const char *utf8 = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &len) : NULL;
        int found = -1;
        for (size_t i = 0; utf8 != NULL && i < COMMON && found < 0; i++) {
            if (common_objects[i] != NULL && PyBytes_GET_SIZE(common_objects[i]) == len &&
                memcmp(PyBytes_AS_STRING(common_objects[i]), utf8, (size_t)len) == 0) {
                found = (int)i;
            }
        }
        if (found < 0) {
            Py_DECREF(seq);
            if (utf8 == NULL && !PyErr_Occurred()) {
                PyErr_SetString(PyExc_TypeError, "configure() takes a sequence of str");
            }
            return utf8 == NULL ? NULL
                : PyErr_Format(PyExc_ValueError, "%R is not among the binding's common names", text);
        }
        texts[found] = text;
        bits[found] = 1LL << n;
    }
    for (size_t i = 0; i < COMMON; i++) {
        Py_XINCREF(texts[i]);
        Py_XSETREF(server_texts[i], texts[i]);
        server_bits[i] = bits[i];
    }
    Py_DECREF(seq);
    Py_RETURN_NONE;
}

/* The method names, made once (llhttp's methods are numbered below 64). */
#define METHODS 64
static PyObject *method_names[METHODS];
static PyObject *version_11;
static PyObject *version_10;

static PyObject *method_name(uint8_t method) {
    PyObject *name = method < METHODS ? method_names[method] : NULL;
    if (name == NULL) {
        name = PyUnicode_FromString(llhttp_method_name((llhttp_method_t)method));
        if (name == NULL) {
            return NULL;
        }
        if (method < METHODS) {
            method_names[method] = name;  /* the cache's reference */
        } else {
            return name;
        }
    }
    Py_INCREF(name);
    return name;
}

static PyObject *version_text(llhttp_t *p) {
    if (p->http_major == 1 && (p->http_minor == 1 || p->http_minor == 0)) {
        PyObject *v = p->http_minor ? version_11 : version_10;
        Py_INCREF(v);
        return v;
    }
    return PyUnicode_FromFormat("%d.%d", (int)p->http_major, (int)p->http_minor);
}

/* A server field's value as a str, decoded as Latin-1 (see last_values). */
static PyObject *decode_field(int common, const char *v, size_t vlen) {
    PyObject *last = last_values[common];
    if (last != NULL && PyUnicode_GET_LENGTH(last) == (Py_ssize_t)vlen &&
        memcmp(PyUnicode_1BYTE_DATA(last), v, vlen) == 0) {
        return Py_NewRef(last);
    }
    PyObject *decoded = PyUnicode_DecodeLatin1(v, (Py_ssize_t)vlen, NULL);
    if (decoded != NULL && vlen <= REUSE_MAX) {
        Py_XSETREF(last_values[common], Py_NewRef(decoded));
    }
    return decoded;
}

static PyObject *parts(state_t *st, llhttp_t *p, int want_known) {
    PyObject *fields = PyList_New(st->count);
    if (fields == NULL) {
        return NULL;
    }
    /* The server's fields by name; None once one of them repeats (the
     * whole dict's rules, join or refuse, are then the reader's to apply),
     * or when the caller's app is given the whole dict anyway. */
    PyObject *known = want_known ? PyDict_New() : Py_NewRef(Py_None);
    long long present = 0;
    if (known == NULL) {
        Py_DECREF(fields);
        return NULL;
    }
    for (int i = 0; i < st->count; i++) {
        const char *v = st->values[i].at;
        size_t vlen = st->values[i].len;
        /* llhttp drops the OWS before a value, not after it (RFC 9110 §5.5:
         * not part of the value either). */
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) {
            vlen--;
        }
        int common;
        PyObject *name = lower_name(st->names[i].at, st->names[i].len, &common);
        PyObject *value = PyBytes_FromStringAndSize(v ? v : "", (Py_ssize_t)vlen);
        /* (PyTuple_New and SET_ITEM, which take the references: PyTuple_Pack
         * walks a va_list and counts each reference twice more.) */
        PyObject *pair = (name && value) ? PyTuple_New(2) : NULL;
        if (pair == NULL) {
            Py_XDECREF(name);
            Py_XDECREF(value);
            Py_DECREF(fields);
            Py_DECREF(known);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        PyList_SET_ITEM(fields, i, pair);
        PyObject *text = common >= 0 ? server_texts[common] : NULL;
        if (text != NULL && known != Py_None) {
            /* One lookup: SetDefault adds the name unless it came before (a
             * repeat), which the dict's size then tells. (Not the object it
             * gives back: an empty or one-character value is a shared str.) */
            Py_ssize_t size = PyDict_GET_SIZE(known);
            PyObject *decoded = decode_field(common, v ? v : "", vlen);
            PyObject *held = decoded ? PyDict_SetDefault(known, text, decoded) : NULL;
            int repeat = held != NULL && PyDict_GET_SIZE(known) == size;
            Py_XDECREF(decoded);  /* (the dict's reference keeps it when held) */
            if (held == NULL) {
                Py_DECREF(fields);
                Py_DECREF(known);
                return NULL;
            }
            if (repeat) {
                Py_SETREF(known, Py_NewRef(Py_None));
            }
            present |= server_bits[common];
        }
    }
    PyObject *target = PyUnicode_DecodeASCII(
        st->url.at ? st->url.at : "", (Py_ssize_t)st->url.len, "strict");
    PyObject *method = target ? method_name(p->method) : NULL;
    PyObject *version = method ? version_text(p) : NULL;
    PyObject *mask = version ? PyLong_FromLongLong(known == Py_None ? -1 : present) : NULL;
    PyObject *result = mask ? PyTuple_New(6) : NULL;
    if (result == NULL) {
        Py_XDECREF(target);
        Py_XDECREF(method);
        Py_XDECREF(version);
        Py_XDECREF(mask);
        Py_DECREF(fields);
        Py_DECREF(known);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, method);
    PyTuple_SET_ITEM(result, 1, target);
    PyTuple_SET_ITEM(result, 2, version);
    PyTuple_SET_ITEM(result, 3, fields);
    PyTuple_SET_ITEM(result, 4, known);
    PyTuple_SET_ITEM(result, 5, mask);
    return result;
}

static PyObject *parse(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "parse(buf: bytes, whole: bool, known: bool)");
        return NULL;
    }
    int whole = PyObject_IsTrue(args[1]);
    int want_known = whole < 0 ? -1 : PyObject_IsTrue(args[2]);
    if (want_known < 0) {
        return NULL;
    }
    const char *buf = PyBytes_AS_STRING(args[0]);
    size_t size = (size_t)PyBytes_GET_SIZE(args[0]);

    state_t st;
    st.url.at = NULL;
    st.url.len = 0;
    st.count = st.have_name = st.have_value = st.overflow = 0;
    st.headers_done = st.message_done = 0;

    llhttp_t parser;
    llhttp_init(&parser, HTTP_REQUEST, &settings);
    parser.data = &st;
    llhttp_errno_t err = llhttp_execute(&parser, buf, size);

    if (st.overflow) {
        Py_RETURN_NONE;
    }
    if (whole) {
        /* Exactly one request, all there (empty lines after it are allowed
         * between requests); an upgrade stops llhttp with HPE_PAUSED_UPGRADE. */
        if (err == HPE_OK && st.message_done) {
            return parts(&st, &parser, want_known);
        }
        Py_RETURN_NONE;
    }
    if (err == HPE_OK || err == HPE_PAUSED_UPGRADE) {
        if (!st.headers_done) {
            Py_RETURN_NONE;  /* not a whole head: not this function's input */
        }
        return parts(&st, &parser, want_known);
    }
    const char *reason = llhttp_get_error_reason(&parser);
    if (reason == NULL) {
        reason = llhttp_errno_name(err);
    }
    return PyUnicode_DecodeLatin1(reason, (Py_ssize_t)strlen(reason), NULL);
}

static PyMethodDef methods[] = {
    {"parse", (PyCFunction)(void (*)(void))parse, METH_FASTCALL,
     "parse(buf, whole, known): a request head's (method, target, version, fields, known, "
     "present), "
     "an llhttp error text, or None (see the module's source)."},
    {"configure", (PyCFunction)configure, METH_O,
     "configure(names): the lower-cased names of the fields parse() gives as a dict too."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_llhttp",
    .m_doc = "One request head through llhttp in one call.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__llhttp(void) {
    llhttp_settings_init(&settings);
    settings.on_message_begin = on_message_begin;
    settings.on_url = on_url;
    settings.on_header_field = on_header_field;
    settings.on_header_value = on_header_value;
    settings.on_headers_complete = on_headers_complete;
    settings.on_message_complete = on_message_complete;
    settings.on_chunk_header = on_chunk_header;
    memset(by_length, -1, sizeof(by_length));
    for (size_t i = 0; i < COMMON; i++) {
        size_t len = strlen(common_names[i]);
        int k = 0;
        while (k < PER_LENGTH && by_length[len][k] >= 0) {
            k++;
        }
        if (k == PER_LENGTH) {
            continue;  /* a full row: that name is simply not shared */
        }
        common_objects[i] = PyBytes_FromStringAndSize(common_names[i], (Py_ssize_t)len);
        if (common_objects[i] == NULL) {
            return NULL;
        }
        by_length[len][k] = (signed char)i;
    }
    version_11 = PyUnicode_InternFromString("1.1");
    version_10 = PyUnicode_InternFromString("1.0");
    if (version_11 == NULL || version_10 == NULL) {
        return NULL;
    }
    return PyModule_Create(&module_def);
}
