/* Drives a library written by `optc build` (tests/aot.rs). Compile with
 * -DRULE=name -DRULE_HEADER='"name.h"'. Reads from stdin (little-endian):
 * u64 tensors, u64 steps, u64 hypers; u64 numels[tensors];
 * f64 hypers[hypers]; the parameters (f32, tensor by tensor); then each
 * step's gradients (f32, tensor by tensor). Runs NAME_init, then the steps
 * t = 1..steps, and writes the parameters and the states (f32) to stdout. */
#include <stdio.h>
#include <stdlib.h>
#include RULE_HEADER

#define CAT(a, b) a##b
#define FN(rule, name) CAT(rule, name)

static void read_all(void *to, size_t bytes) {
    if (fread(to, 1, bytes, stdin) != bytes) {
        fprintf(stderr, "driver: short input\n");
        exit(2);
    }
}

int main(void) {
    uint64_t head[3];
    read_all(head, sizeof head);
    size_t tensors = head[0], steps = head[1], hypers = head[2];
    size_t *numels = malloc(tensors * sizeof *numels);
    uint64_t *raw = malloc(tensors * sizeof *raw);
    read_all(raw, tensors * sizeof *raw);
    for (size_t i = 0; i < tensors; i++) numels[i] = raw[i];
    double *values = malloc((hypers ? hypers : 1) * sizeof *values);
    read_all(values, hypers * sizeof *values);
    float **params = malloc(tensors * sizeof *params);
    float **grads = malloc(tensors * sizeof *grads);
    float **states = malloc(tensors * sizeof *states);
    for (size_t i = 0; i < tensors; i++) {
        params[i] = malloc(numels[i] * sizeof(float) + 1);
        grads[i] = malloc(numels[i] * sizeof(float) + 1);
        states[i] = malloc(FN(RULE, _state_size)(numels[i]) + 1);
        read_all(params[i], numels[i] * sizeof(float));
        FN(RULE, _init)(states[i], numels[i]);
    }
    for (uint64_t t = 1; t <= steps; t++) {
        for (size_t i = 0; i < tensors; i++) read_all(grads[i], numels[i] * sizeof(float));
        FN(RULE, _step)(tensors, params, (const float *const *)grads, states, numels, values, t);
    }
    for (size_t i = 0; i < tensors; i++) fwrite(params[i], sizeof(float), numels[i], stdout);
    for (size_t i = 0; i < tensors; i++)
        fwrite(states[i], 1, FN(RULE, _state_size)(numels[i]), stdout);
    return 0;
}
