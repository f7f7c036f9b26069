/* The profile hook of an exported intvit model (not part of the library): built with
 * -DINTVIT_PROFILE beside it, intvit_profile_run(image, logits, scratch, ticks) runs one
 * float image and writes monotonic nanoseconds to ticks (INTVIT_MODEL_NODES + 1 values):
 * ticks[0] before the run, ticks[i + 1] once node i is done, so node i took
 * ticks[i + 1] - ticks[i]. The ticks go through one static pointer: one profiled run at
 * a time per process. */
#define _POSIX_C_SOURCE 199309L
#include <time.h>
#include "intvit_model.h"

static int64_t *profile_ticks;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

void intvit_profile_node(int32_t node) {
    profile_ticks[node + 1] = now_ns();
}

int32_t intvit_profile_run(const float *image, int32_t *logits, void *scratch,
                           int64_t *ticks) {
    int32_t status;
    profile_ticks = ticks;
    ticks[0] = now_ns();
    status = intvit_model_run_float(image, logits, scratch);
    profile_ticks = NULL;
    return status;
}
