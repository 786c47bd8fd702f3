/*
 * reefknot_plugin.h: the C ABI of reefknot operator plugins (ABI 1.1).
 *
 * The same interface as the Rust crate `reefknot-plugin-api` (src/abi.rs); a test of
 * that crate compiles this header against the Rust layout (size, alignment, every
 * field's offset and size, every constant), so the two cannot drift apart.
 *
 * A plugin is a shared library exporting two functions:
 *
 *   RkAbiVersion   reefknot_plugin_abi_version(void);   // {REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR}
 *   const RkPlugin *reefknot_plugin_descriptor(void);   // a static table of operators
 *
 * Rules (docs/plugins.md has the whole guide):
 *  - Strings are RkStr: a pointer and a length in bytes, UTF-8, not NUL-terminated.
 *  - Structs that may grow start with `size`, their size as their writer compiled
 *    them; fields are only ever appended (in a new minor version). Arrays of them are
 *    strided by their elements' `size`: read host arrays with rk_arg_at().
 *  - The descriptor table and everything it points to is static, immutable data.
 *  - The host allocates and frees every buffer, including the error buffer: never
 *    free or keep a pointer the host passed, and never hand the host memory to free.
 *  - An operator may be called from several threads at once, on different chunks:
 *    keep it reentrant, and start no threads of your own (the host does all
 *    parallelism).
 *  - Randomness must be a function of (seed, tensor, element index `offset + j`), so
 *    results do not depend on how the host chunks a tensor.
 */
#ifndef REEFKNOT_PLUGIN_H
#define REEFKNOT_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Versions: a host refuses another major, or a newer minor than its own. */
#define REEFKNOT_ABI_MAJOR 1
#define REEFKNOT_ABI_MINOR 1

/* What an operator's call returns. */
#define RK_STATUS_OK 0    /* the output is written */
#define RK_STATUS_ERROR 1 /* failed; the error buffer holds a message */
#define RK_STATUS_PANIC 2 /* a panic was caught (Rust SDK); the message is in the buffer */

/* The three types that flow through a pipeline (RkCall.input / .output). */
#define RK_TYPE_STACK 1 /* the T task vectors */
#define RK_TYPE_VOTED 2 /* the task vectors plus an elected sign per element */
#define RK_TYPE_DELTA 3 /* one merged delta */

/* Signature bits (RkOperator.signatures): at least one, at most one per input type. */
#define RK_SIG_STACK_STACK (1u << 0)
#define RK_SIG_STACK_VOTED (1u << 1)
#define RK_SIG_VOTED_DELTA (1u << 2)
#define RK_SIG_STACK_DELTA (1u << 3)
#define RK_SIG_DELTA_DELTA (1u << 4)
#define RK_SIG_VOTED_VOTED (1u << 5) /* ABI 1.1: rewrites the task vectors and signs */

/* Operator flags (RkOperator.flags). */
#define RK_OP_ELEMENTWISE (1u << 0)  /* output j depends on inputs j only: called per chunk */
#define RK_OP_NEEDS_BASE (1u << 1)   /* reads RkCall.base */
#define RK_OP_NEEDS_FISHER (1u << 2) /* reads RkCall.fisher */
#define RK_OP_NEEDS_TASKS (1u << 3)  /* ABI 1.1: a Delta->Delta call reads RkCall.tasks */

/* Parameter kinds (RkParam.kind, RkArg.kind). */
#define RK_PARAM_NUMBER 1
#define RK_PARAM_CHOICE 2
#define RK_PARAM_BOOL 3
#define RK_PARAM_TEXT 4

/* Ends of a number parameter's range (RkParam.min_bound / .max_bound). */
#define RK_BOUND_NONE 0
#define RK_BOUND_INCLUSIVE 1
#define RK_BOUND_EXCLUSIVE 2

/* A borrowed UTF-8 string (not NUL-terminated; ptr may be NULL when len is 0). */
typedef struct RkStr {
    const char *ptr;
    size_t len;
} RkStr;

/* RK_STR("literal"): an RkStr of a string literal. */
#define RK_STR(literal) { (literal), sizeof(literal) - 1 }

/* The ABI version a plugin was built against (returned by value). */
typedef struct RkAbiVersion {
    uint32_t major;
    uint32_t minor;
} RkAbiVersion;

typedef struct RkCall RkCall;
typedef struct RkOutput RkOutput;

/* An operator's entry point: read `call`, write `out`, return an RK_STATUS_*. */
typedef uint32_t (*RkCallFn)(const RkCall *call, RkOutput *out);

/* One parameter of an operator. */
typedef struct RkParam {
    size_t size;          /* sizeof(RkParam) */
    RkStr name;           /* an identifier, unique in the operator */
    RkStr doc;            /* one line */
    uint32_t kind;        /* RK_PARAM_* */
    uint32_t has_default; /* 1: may be omitted */
    uint32_t min_bound;   /* numbers: RK_BOUND_* */
    uint32_t max_bound;   /* numbers: RK_BOUND_* */
    double min;           /* numbers: the lower end */
    double max;           /* numbers: the upper end */
    double default_number;
    uint32_t default_bool; /* 0 or 1 */
    uint32_t reserved;     /* must be 0 */
    RkStr default_text;    /* choices: the default identifier; text: the default string */
    const RkStr *choices;  /* choices: the accepted identifiers */
    size_t choice_count;
} RkParam;

/* One operator. */
typedef struct RkOperator {
    size_t size;    /* sizeof(RkOperator) */
    RkStr name;     /* an identifier, unique in the plugin */
    RkStr summary;  /* one line for `reefknot ops` */
    RkStr doc;      /* Markdown (may be empty) */
    const RkParam *params; /* in positional order */
    size_t param_count;
    uint32_t signatures; /* RK_SIG_* bits */
    uint32_t flags;      /* RK_OP_* bits */
    RkCallFn call;       /* not NULL */
    const void *data;    /* handed back as RkCall.op_data */
} RkOperator;

/* The plugin's table. */
typedef struct RkPlugin {
    size_t size;       /* sizeof(RkPlugin) */
    RkStr name;        /* the namespace: an identifier */
    RkStr version;     /* the plugin's own version (free text) */
    RkStr description; /* one line (may be empty) */
    const RkOperator *operators;
    size_t operator_count; /* at least 1 */
} RkPlugin;

/* One resolved argument (host-owned). */
typedef struct RkArg {
    size_t size;  /* sizeof(RkArg) on the host: the stride of RkCall.args */
    RkStr name;
    uint32_t kind;           /* RK_PARAM_* */
    uint32_t boolean;        /* bools: 0 or 1 */
    const double *numbers;   /* numbers: 1 value, or one per model */
    size_t number_count;
    RkStr text;              /* choices: the identifier; text: the string */
} RkArg;

/* What a call reads: views of one element range of one tensor (host-owned).
 * Every float pointer points at `len` values; pointers the operator's type and
 * flags do not call for are NULL. Element j is element offset + j of the tensor. */
struct RkCall {
    size_t size;    /* sizeof(RkCall) on the host */
    RkStr tensor;   /* the tensor's name */
    uint64_t seed;  /* the recipe's seed */
    uint64_t offset; /* the first element's index in the tensor */
    uint64_t numel;  /* elements in the whole tensor */
    size_t len;      /* elements in this call */
    size_t models;   /* T */
    uint32_t input;  /* RK_TYPE_*: what the stage receives */
    uint32_t output; /* RK_TYPE_*: what it hands on */
    const float *const *stack;  /* T task vectors (Stack, Voted inputs) */
    const float *sign;          /* elected signs, +1 or -1 (Voted input) */
    const float *delta;         /* the merged delta (Delta input) */
    const float *base;          /* base values (RK_OP_NEEDS_BASE) */
    const float *const *fisher; /* T diagonal Fishers (RK_OP_NEEDS_FISHER) */
    const float *weights;       /* T model weights */
    const RkArg *args;          /* in parameter order; stride args->size: use rk_arg_at */
    size_t arg_count;
    const void *op_data;        /* RkOperator.data */
    /* ABI 1.1 */
    const uint64_t *shape;      /* the tensor's shape, outermost first (row-major) */
    size_t ndim;                /* dimensions of `shape` */
    int64_t layer;              /* model.layers.N -> N; -1 for a tensor of no layer */
    const float *const *tasks;  /* T task vectors (Delta->Delta with RK_OP_NEEDS_TASKS) */
};

/* Where a call writes: host-owned buffers of `len` values, disjoint from the inputs. */
struct RkOutput {
    size_t size;          /* sizeof(RkOutput) on the host */
    float *const *stack;  /* Stack output, Voted->Voted: T task vectors */
    float *sign;          /* Voted output: +1.0f or -1.0f per element */
    float *delta;         /* Delta output */
    char *error;          /* a buffer for an error message (UTF-8) */
    size_t error_capacity;
    size_t error_len;     /* set by a failing call: bytes written */
};

/* Argument i of a call (the host's RkArg may be larger than this header's). */
static inline const RkArg *rk_arg_at(const RkCall *call, size_t i) {
    return (const RkArg *)((const char *)call->args + i * call->args->size);
}

/* The argument named `name`, or NULL. */
static inline const RkArg *rk_arg(const RkCall *call, const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < call->arg_count; i++) {
        const RkArg *a = rk_arg_at(call, i);
        if (a->name.len == n && memcmp(a->name.ptr, name, n) == 0) {
            return a;
        }
    }
    return NULL;
}

/* Number argument `name` for model i (a shared value serves every model), or `fallback`. */
static inline double rk_number(const RkCall *call, const char *name, size_t model, double fallback) {
    const RkArg *a = rk_arg(call, name);
    if (a == NULL || a->kind != RK_PARAM_NUMBER || a->number_count == 0) {
        return fallback;
    }
    return a->numbers[a->number_count == 1 ? 0 : model];
}

/* Choice argument `name`: whether its identifier is `value` (0 when absent). */
static inline int rk_choice_is(const RkCall *call, const char *name, const char *value) {
    const RkArg *a = rk_arg(call, name);
    size_t n = strlen(value);
    return a != NULL && a->kind == RK_PARAM_CHOICE && a->text.len == n &&
           memcmp(a->text.ptr, value, n) == 0;
}

/* Bool argument `name` (1 or 0), or `fallback`. */
static inline int rk_bool(const RkCall *call, const char *name, int fallback) {
    const RkArg *a = rk_arg(call, name);
    if (a == NULL || a->kind != RK_PARAM_BOOL) {
        return fallback;
    }
    return a->boolean != 0;
}

/* Text or choice argument `name` (not NUL-terminated), or an empty string. */
static inline RkStr rk_text(const RkCall *call, const char *name) {
    const RkArg *a = rk_arg(call, name);
    RkStr empty = {NULL, 0};
    if (a == NULL || (a->kind != RK_PARAM_TEXT && a->kind != RK_PARAM_CHOICE)) {
        return empty;
    }
    return a->text;
}

/* Rows and columns of the tensor as a matrix: the outermost dimension, and the rest. */
static inline void rk_matrix(const RkCall *call, uint64_t *rows, uint64_t *columns) {
    *rows = call->ndim > 0 ? call->shape[0] : 1;
    *columns = *rows > 0 ? call->numel / *rows : 0;
}

/* Writes `message` (NUL-terminated) into the host's error buffer; returns RK_STATUS_ERROR. */
static inline uint32_t rk_fail(RkOutput *out, const char *message) {
    size_t n = strlen(message);
    if (n > out->error_capacity) {
        n = out->error_capacity;
        /* do not cut a UTF-8 sequence in half */
        while (n > 0 && ((unsigned char)message[n] & 0xC0) == 0x80) {
            n--;
        }
    }
    memcpy(out->error, message, n);
    out->error_len = n;
    return RK_STATUS_ERROR;
}

/* Marks the two exported functions. */
#if defined(_WIN32)
#define RK_EXPORT __declspec(dllexport)
#else
#define RK_EXPORT __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
}
#endif

#endif /* REEFKNOT_PLUGIN_H */
