/*
 * rows: row-wise operators in plain C, the example of ABI 1.1's shape, of a
 * Voted->Voted stage and of the header's choice and bool helpers.
 *
 *   rows::keep(density=0.2, scope=rows, rescale=false)    Stack->Stack, whole tensor
 *       Per model, keep the entries of largest |delta| and zero the others: in each
 *       row of the tensor seen as a [rows, columns] matrix (scope=rows), or over the
 *       whole tensor (scope=tensor). k = ceil(density * n) entries of the n are kept
 *       (at least 1); an entry ties with the k-th largest magnitude is kept too. With
 *       rescale=true, kept entries are divided by density (as DARE rescales).
 *       TIES's trim is scope=tensor; row-wise trimming keeps every output feature's
 *       largest updates, where a tensor-wide threshold may empty whole rows.
 *   rows::agree(min_share=0.5)                           Voted->Voted, whole tensor
 *       Per model and row, the share of the row's nonzero entries whose sign is the
 *       elected one; a model's row whose share is below min_share is zeroed (that
 *       model fights the consensus in that row). The signs pass unchanged.
 *
 * Build (any C99 compiler):
 *   cc -std=c99 -O2 -shared -fPIC -I crates/plugin-api/include \
 *      -o librows.so plugins/rows/rows.c -lm
 */
#include <math.h>
#include <stdlib.h>

#include "reefknot_plugin.h"

static int descending(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* Keeps the k largest magnitudes of v[0..n) (ties with the k-th kept), scaled. */
static void keep_run(const float *v, float *o, size_t n, double density, float scale,
                     float *scratch) {
    if (n == 0) {
        return;
    }
    size_t k = (size_t)ceil(density * (double)n);
    if (k < 1) {
        k = 1;
    }
    if (k > n) {
        k = n;
    }
    for (size_t j = 0; j < n; j++) {
        scratch[j] = fabsf(v[j]);
    }
    qsort(scratch, n, sizeof(float), descending);
    float threshold = scratch[k - 1];
    for (size_t j = 0; j < n; j++) {
        o[j] = fabsf(v[j]) >= threshold ? v[j] * scale : 0.0f;
    }
}

static uint32_t keep_call(const RkCall *call, RkOutput *out) {
    double density = rk_number(call, "density", 0, 0.2);
    float scale = rk_bool(call, "rescale", 0) ? (float)(1.0 / density) : 1.0f;
    uint64_t rows, columns;
    rk_matrix(call, &rows, &columns);
    if (rk_choice_is(call, "scope", "tensor")) {
        rows = 1;
        columns = call->numel;
    }
    float *scratch = malloc((columns > 0 ? columns : 1) * sizeof(float));
    if (scratch == NULL) {
        return rk_fail(out, "out of memory");
    }
    for (size_t i = 0; i < call->models; i++) {
        for (uint64_t r = 0; r < rows; r++) {
            keep_run(call->stack[i] + r * columns, out->stack[i] + r * columns, columns,
                     density, scale, scratch);
        }
    }
    free(scratch);
    return RK_STATUS_OK;
}

static uint32_t agree_call(const RkCall *call, RkOutput *out) {
    double min_share = rk_number(call, "min_share", 0, 0.5);
    uint64_t rows, columns;
    rk_matrix(call, &rows, &columns);
    for (size_t j = 0; j < call->len; j++) {
        out->sign[j] = call->sign[j];
    }
    for (size_t i = 0; i < call->models; i++) {
        for (uint64_t r = 0; r < rows; r++) {
            const float *v = call->stack[i] + r * columns;
            const float *s = call->sign + r * columns;
            size_t nonzero = 0, agreeing = 0;
            for (uint64_t c = 0; c < columns; c++) {
                if (v[c] != 0.0f) {
                    nonzero++;
                    agreeing += (v[c] > 0.0f) == (s[c] > 0.0f);
                }
            }
            int keep = nonzero == 0 || (double)agreeing >= min_share * (double)nonzero;
            float *o = out->stack[i] + r * columns;
            for (uint64_t c = 0; c < columns; c++) {
                o[c] = keep ? v[c] : 0.0f;
            }
        }
    }
    return RK_STATUS_OK;
}

static const RkStr scopes[] = {RK_STR("rows"), RK_STR("tensor")};

static const RkParam keep_params[] = {
    {
        .size = sizeof(RkParam),
        .name = RK_STR("density"),
        .doc = RK_STR("the share of entries kept in each row"),
        .kind = RK_PARAM_NUMBER,
        .has_default = 1,
        .min_bound = RK_BOUND_EXCLUSIVE,
        .min = 0.0,
        .max_bound = RK_BOUND_INCLUSIVE,
        .max = 1.0,
        .default_number = 0.2,
    },
    {
        .size = sizeof(RkParam),
        .name = RK_STR("scope"),
        .doc = RK_STR("rows: keep the largest of each row; tensor: of the whole tensor"),
        .kind = RK_PARAM_CHOICE,
        .has_default = 1,
        .default_text = RK_STR("rows"),
        .choices = scopes,
        .choice_count = 2,
    },
    {
        .size = sizeof(RkParam),
        .name = RK_STR("rescale"),
        .doc = RK_STR("divide the kept entries by density"),
        .kind = RK_PARAM_BOOL,
        .has_default = 1,
        .default_bool = 0,
    },
};

static const RkParam agree_params[] = {{
    .size = sizeof(RkParam),
    .name = RK_STR("min_share"),
    .doc = RK_STR("the least share of a row's entries that must follow the elected sign"),
    .kind = RK_PARAM_NUMBER,
    .has_default = 1,
    .min_bound = RK_BOUND_INCLUSIVE,
    .min = 0.0,
    .max_bound = RK_BOUND_INCLUSIVE,
    .max = 1.0,
    .default_number = 0.5,
}};

static const RkOperator operators[] = {
    {
        .size = sizeof(RkOperator),
        .name = RK_STR("keep"),
        .summary = RK_STR("keep each row's largest entries of every task vector"),
        .doc = RK_STR("Per model, keeps the ceil(density * n) entries of largest |delta| of "
                      "each row (scope=rows) or of the tensor (scope=tensor); ties with "
                      "the last kept magnitude are kept. rescale=true divides them by "
                      "density."),
        .params = keep_params,
        .param_count = 3,
        .signatures = RK_SIG_STACK_STACK,
        .flags = 0, /* whole tensor: a row may span chunks */
        .call = keep_call,
        .data = NULL,
    },
    {
        .size = sizeof(RkOperator),
        .name = RK_STR("agree"),
        .summary = RK_STR("zero a model's rows that mostly oppose the elected signs"),
        .doc = RK_STR("Per model and row: the share of the row's nonzero entries whose "
                      "sign is the elected one; below min_share the model's row is "
                      "zeroed. The signs pass unchanged (Voted->Voted)."),
        .params = agree_params,
        .param_count = 1,
        .signatures = RK_SIG_VOTED_VOTED,
        .flags = 0,
        .call = agree_call,
        .data = NULL,
    },
};

static const RkPlugin plugin = {
    .size = sizeof(RkPlugin),
    .name = RK_STR("rows"),
    .version = RK_STR("0.1.0"),
    .description = RK_STR("row-wise trimming and row-wise sign agreement (ABI 1.1)"),
    .operators = operators,
    .operator_count = 2,
};

RK_EXPORT RkAbiVersion reefknot_plugin_abi_version(void) {
    RkAbiVersion v = {REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR};
    return v;
}

RK_EXPORT const RkPlugin *reefknot_plugin_descriptor(void) {
    return &plugin;
}
