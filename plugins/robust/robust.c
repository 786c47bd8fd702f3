/*
 * robust: two operators written in plain C against reefknot_plugin.h, to show that
 * the plugin ABI is language-neutral.
 *
 *   robust::clip(max_abs)   Stack->Stack, Delta->Delta
 *       x <- min(max(x, -max_abs), max_abs) for every entry: caps outlier updates
 *       (on a stack, max_abs may be per model: clip(max_abs = $cap)).
 *   robust::median          Stack->Delta
 *       Delta_j = the median over models of u_ij = w_i * delta_ij (the mean of the two
 *       middle values when T is even): a merge that ignores a minority of outliers.
 *
 * Build (any C99 compiler):
 *   cc -std=c99 -O2 -shared -fPIC -I crates/plugin-api/include \
 *      -o librobust.so plugins/robust/robust.c
 */
#include <stdlib.h>

#include "reefknot_plugin.h"

static float clamp(float x, float c) {
    return x < -c ? -c : (x > c ? c : x);
}

static uint32_t clip_call(const RkCall *call, RkOutput *out) {
    size_t len = call->len;
    if (call->input == RK_TYPE_DELTA) {
        float c = (float)rk_number(call, "max_abs", 0, 0.0);
        for (size_t j = 0; j < len; j++) {
            out->delta[j] = clamp(call->delta[j], c);
        }
        return RK_STATUS_OK;
    }
    for (size_t i = 0; i < call->models; i++) {
        float c = (float)rk_number(call, "max_abs", i, 0.0);
        const float *in = call->stack[i];
        float *o = out->stack[i];
        for (size_t j = 0; j < len; j++) {
            o[j] = clamp(in[j], c);
        }
    }
    return RK_STATUS_OK;
}

static uint32_t median_call(const RkCall *call, RkOutput *out) {
    size_t t = call->models;
    float *u = malloc(t * sizeof(float)); /* the plugin's own memory, freed below */
    if (u == NULL) {
        return rk_fail(out, "out of memory");
    }
    for (size_t j = 0; j < call->len; j++) {
        /* insertion sort of the T weighted entries */
        for (size_t i = 0; i < t; i++) {
            float x = call->weights[i] * call->stack[i][j];
            size_t k = i;
            while (k > 0 && u[k - 1] > x) {
                u[k] = u[k - 1];
                k--;
            }
            u[k] = x;
        }
        out->delta[j] = (t % 2 == 1) ? u[t / 2] : 0.5f * (u[t / 2 - 1] + u[t / 2]);
    }
    free(u);
    return RK_STATUS_OK;
}

static const RkParam clip_params[] = {
    {
        .size = sizeof(RkParam),
        .name = RK_STR("max_abs"),
        .doc = RK_STR("the largest magnitude an entry keeps"),
        .kind = RK_PARAM_NUMBER,
        .has_default = 0,
        .min_bound = RK_BOUND_EXCLUSIVE,
        .min = 0.0,
        .max_bound = RK_BOUND_NONE,
    },
};

static const RkOperator operators[] = {
    {
        .size = sizeof(RkOperator),
        .name = RK_STR("clip"),
        .summary = RK_STR("clip every entry to [-max_abs, max_abs]"),
        .doc = RK_STR("Magnitude clipping: `x <- min(max(x, -max_abs), max_abs)` for every "
                      "entry of each task vector (Stack->Stack; `max_abs` may be per model) "
                      "or of the merged delta (Delta->Delta). Caps outlier updates before "
                      "or after combining."),
        .params = clip_params,
        .param_count = 1,
        .signatures = RK_SIG_STACK_STACK | RK_SIG_DELTA_DELTA,
        .flags = RK_OP_ELEMENTWISE,
        .call = clip_call,
        .data = NULL,
    },
    {
        .size = sizeof(RkOperator),
        .name = RK_STR("median"),
        .summary = RK_STR("per-element median of the weighted task vectors"),
        .doc = RK_STR("`Delta_j = median_i(w_i * delta_ij)`, the mean of the two middle "
                      "values when the number of models is even. Robust to a minority of "
                      "models pulling an entry far away."),
        .params = NULL,
        .param_count = 0,
        .signatures = RK_SIG_STACK_DELTA,
        .flags = RK_OP_ELEMENTWISE,
        .call = median_call,
        .data = NULL,
    },
};

static const RkPlugin plugin = {
    .size = sizeof(RkPlugin),
    .name = RK_STR("robust"),
    .version = RK_STR("0.1.0"),
    .description = RK_STR("robust operators in plain C: magnitude clipping and the median"),
    .operators = operators,
    .operator_count = sizeof(operators) / sizeof(operators[0]),
};

RK_EXPORT RkAbiVersion reefknot_plugin_abi_version(void) {
    RkAbiVersion v = {REEFKNOT_ABI_MAJOR, REEFKNOT_ABI_MINOR};
    return v;
}

RK_EXPORT const RkPlugin *reefknot_plugin_descriptor(void) {
    return &plugin;
}
