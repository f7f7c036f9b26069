/* A host program around an exported intvit model (not part of the library): reads
 * float images (C x H x W each, float32, native byte order) from argv[1], writes their
 * int32 logits to argv[2]. Built with -DINTVIT_DEBUG it also writes every node's output
 * to argv[3]: per node a record (int32 image, int32 node, int32 type, int32 count, then
 * count values of that type: 0 int8, 1 uint8, 2 int16, 3 int32). The scratch buffer is
 * allocated with exactly INTVIT_MODEL_SCRATCH_BYTES, so an address sanitizer sees any
 * access past the memory plan. */
#include <stdio.h>
#include <stdlib.h>
#include "intvit_model.h"

#ifdef INTVIT_DEBUG
static FILE *dump;
static int32_t image_index;

void intvit_debug_node(int32_t node, const void *data, int32_t type, int32_t count) {
    static const int32_t sizes[4] = {1, 1, 2, 4};
    int32_t head[4];
    head[0] = image_index; head[1] = node; head[2] = type; head[3] = count;
    fwrite(head, sizeof head, 1, dump);
    fwrite(data, (size_t)sizes[type], (size_t)count, dump);
}
#endif

int main(int argc, char **argv) {
    FILE *in, *out;
    float *image = malloc(sizeof(float) * INTVIT_MODEL_INPUT_SIZE);
    void *scratch = malloc(INTVIT_MODEL_SCRATCH_BYTES);
    int32_t logits[INTVIT_MODEL_CLASSES], n = 0;
    if (argc < 3 || !image || !scratch) return 2;
    in = fopen(argv[1], "rb");
    out = fopen(argv[2], "wb");
    if (!in || !out) return 2;
#ifdef INTVIT_DEBUG
    if (argc < 4 || !(dump = fopen(argv[3], "wb"))) return 2;
#endif
    while (fread(image, sizeof(float), INTVIT_MODEL_INPUT_SIZE, in) == INTVIT_MODEL_INPUT_SIZE) {
#ifdef INTVIT_DEBUG
        image_index = n;
#endif
        if (intvit_model_run_float(image, logits, scratch) != 0) return 1;
        fwrite(logits, sizeof(int32_t), INTVIT_MODEL_CLASSES, out);
        n++;
    }
#ifdef INTVIT_DEBUG
    fclose(dump);
#endif
    fclose(in);
    fclose(out);
    free(image);
    free(scratch);
    return n > 0 ? 0 : 1;
}
