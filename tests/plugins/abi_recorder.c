/* A policy plugin that evicts the oldest tokens and records every call the engine makes, to test
 * the ABI's promises (tests/test_kv_policies.py). Arguments (--policy-args): "FLAGS:VERSION:PATH"
 * where FLAGS are the TOVA_POLICY_* flags it declares, VERSION its ABI version (1 or 2), and PATH
 * the file its counts are written to when the engine destroys it, one "name value" per line. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tova/policy_plugin.h>

typedef struct {
  char path[1024];
  long inserts, selects, selects_zero, evict_asked, evict_told, resets, reset_seqs;
  long probs_null, probs_set, probs_bad_sum, bad_new_slot, bad_seq, probs_mean_only;
} recorder;

static void on_insert(void* u, const tova_policy_view* v, int32_t slot) {
  recorder* r = (recorder*)u;
  r->inserts++;
  if (slot != v->new_slot || v->pos[slot] != v->t) r->bad_new_slot++;
}

static int select_oldest(void* u, const tova_policy_view* v, int32_t* out) {
  recorder* r = (recorder*)u;
  r->selects++;
  if (v->n_evict == 0) r->selects_zero++;
  r->evict_asked += v->n_evict;
  if (v->seq != 0) r->bad_seq++;
  if (v->probs_mean != NULL && v->probs == NULL) { /* the head mean alone (TOVA_POLICY_MEAN_ONLY) */
    double sum = 0;
    r->probs_mean_only++;
    for (int32_t i = 0; i < v->n_slots; ++i) sum += v->probs_mean[i];
    if (fabs(sum - 1.0) > 1e-3) r->probs_bad_sum++;
  } else if (v->probs == NULL || v->probs_mean == NULL) {
    r->probs_null++;
  } else {
    r->probs_set++;
    for (int32_t h = 0; h < v->n_heads; ++h) { /* each head's row is a distribution */
      double sum = 0;
      for (int32_t i = 0; i < v->n_slots; ++i) sum += v->probs[(size_t)h * v->n_slots + i];
      if (fabs(sum - 1.0) > 1e-3) r->probs_bad_sum++;
    }
  }
  for (int32_t k = 0; k < v->n_evict; ++k) { /* the k-th oldest unprotected valid slot */
    int32_t best = -1;
    for (int32_t i = 0; i < v->n_slots; ++i) {
      if (v->pos[i] < 0 || v->protect[i]) continue;
      int taken = 0;
      for (int32_t j = 0; j < k; ++j) taken |= out[j] == i;
      if (!taken && (best < 0 || v->pos[i] < v->pos[best])) best = i;
    }
    out[k] = best;
  }
  return 0;
}

static void on_evict(void* u, const tova_policy_view* v, const int32_t* slots, int32_t n) {
  (void)v;
  (void)slots;
  ((recorder*)u)->evict_told += n;
}

static void reset(void* u) { ((recorder*)u)->resets++; }
static void reset_seq(void* u, int32_t seq) {
  recorder* r = (recorder*)u;
  r->reset_seqs++;
  if (seq != 0) r->bad_seq++;
}

static void destroy(tova_policy* p) {
  recorder* r = (recorder*)p->user;
  FILE* f = fopen(r->path, "w");
  if (f) {
    fprintf(f, "inserts %ld\nselects %ld\nselects_zero %ld\nevict_asked %ld\nevict_told %ld\n"
               "resets %ld\nreset_seqs %ld\nprobs_null %ld\nprobs_set %ld\nprobs_bad_sum %ld\n"
               "bad_new_slot %ld\nbad_seq %ld\nprobs_mean_only %ld\n",
            r->inserts, r->selects, r->selects_zero, r->evict_asked, r->evict_told, r->resets,
            r->reset_seqs, r->probs_null, r->probs_set, r->probs_bad_sum, r->bad_new_slot,
            r->bad_seq, r->probs_mean_only);
    fclose(f);
  }
  free(r);
  free(p);
}

tova_policy* tova_policy_create(const char* args) {
  unsigned flags = 0, version = 2;
  int used = 0;
  if (sscanf(args, "%u:%u:%n", &flags, &version, &used) < 2 || used == 0) return NULL;
  tova_policy* p = calloc(1, sizeof(tova_policy));
  recorder* r = calloc(1, sizeof(recorder));
  if (!p || !r) {
    free(p);
    free(r);
    return NULL;
  }
  strncpy(r->path, args + used, sizeof r->path - 1);
  p->abi_version = version;
  p->struct_size = version >= 2 ? (uint32_t)sizeof(tova_policy) : (uint32_t)TOVA_POLICY_V1_SIZE;
  p->name = "abi-recorder";
  p->flags = flags;
  p->user = r;
  p->on_insert = on_insert;
  p->select = select_oldest;
  p->on_evict = on_evict;
  p->reset = reset;
  p->destroy = destroy;
  if (version >= 2) p->reset_seq = reset_seq;
  return p;
}
