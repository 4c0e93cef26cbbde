// Prompt and generated tokens/s of a GGUF model through llama.cpp's C API (llama.h), for
// benchmarks/speed/llama_cpp.py where llama-bench (which needs llama.cpp's `common` library) is not built.
// Measures what llama-bench's pp<P> and tg<N> do: one decode of a P-token prompt, then N one-token decodes
// (greedy: the argmax of each step's logits is the next token), n_threads for both.
//
//   llama_decode MODEL.gguf PROMPT NEW THREADS   -> one JSON line per test, llama-bench's fields:
//   [{"n_prompt": P, "n_gen": 0, "avg_ts": ...}, {"n_prompt": 0, "n_gen": N, "avg_ts": ...}]
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "llama.h"

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

static void quiet(enum ggml_log_level level, const char* text, void* data) {
  (void)level; (void)text; (void)data;
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s MODEL.gguf PROMPT NEW THREADS\n", argv[0]);
    return 2;
  }
  const int n_prompt = atoi(argv[2]), n_gen = atoi(argv[3]), threads = atoi(argv[4]);
  llama_log_set(quiet, NULL);
  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  struct llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) {
    fprintf(stderr, "cannot load %s\n", argv[1]);
    return 1;
  }
  const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
  struct llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n_prompt + n_gen + 16;
  cp.n_batch = cp.n_ubatch = n_prompt;
  cp.n_threads = cp.n_threads_batch = threads;
  struct llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) {
    fprintf(stderr, "cannot create a context\n");
    return 1;
  }
  llama_token* prompt = malloc(sizeof(llama_token) * n_prompt);
  srand(1);
  for (int i = 0; i < n_prompt; ++i) prompt[i] = rand() % vocab;
  // warm-up (as llama-bench): a short prompt and one token, then a fresh state
  llama_decode(ctx, llama_batch_get_one(prompt, n_prompt < 16 ? n_prompt : 16));
  llama_memory_clear(llama_get_memory(ctx), true);

  double t0 = now();
  if (llama_decode(ctx, llama_batch_get_one(prompt, n_prompt))) return 1;
  llama_synchronize(ctx);
  const double prompt_s = now() - t0;
  const float* logits = llama_get_logits_ith(ctx, -1);
  llama_token tok = 0;
  for (int v = 1; v < vocab; ++v) if (logits[v] > logits[tok]) tok = v;
  t0 = now();
  for (int i = 0; i < n_gen; ++i) {
    if (llama_decode(ctx, llama_batch_get_one(&tok, 1))) return 1;
    logits = llama_get_logits_ith(ctx, -1);
    llama_token next = 0;
    for (int v = 1; v < vocab; ++v) if (logits[v] > logits[next]) next = v;
    tok = next;
  }
  llama_synchronize(ctx);
  const double gen_s = now() - t0;
  printf("[{\"n_prompt\": %d, \"n_gen\": 0, \"avg_ts\": %.4f}, {\"n_prompt\": 0, \"n_gen\": %d, \"avg_ts\": %.4f}]\n",
         n_prompt, n_prompt / prompt_s, n_gen, n_gen / gen_s);
  free(prompt);
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
