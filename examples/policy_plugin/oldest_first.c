/* An example eviction policy as a shared library: evicts the oldest unprotected tokens, i.e. the
 * window policy, in plain C against <tova/policy_plugin.h>.
 *
 *   cc -shared -fPIC -O2 -I cpp/include examples/policy_plugin/oldest_first.c -o liboldest.so
 *   tova run -m smollm2-135m-instruct -p "Hello" --kv-size 64 --policy-plugin ./liboldest.so
 */
#include <stdlib.h>

#include "tova/policy_plugin.h"

static int select_oldest(void* user, const tova_policy_view* v, int32_t* out) {
  (void)user;
  /* n_evict is small (1 per step when decoding): pick the minimum n_evict times. */
  for (int32_t k = 0; k < v->n_evict; ++k) {
    int32_t best = -1;
    for (int32_t s = 0; s < v->n_slots; ++s) {
      if (v->pos[s] < 0 || v->protect[s]) continue;
      int taken = 0;
      for (int32_t j = 0; j < k; ++j) taken |= out[j] == s;
      if (taken) continue;
      if (best < 0 || v->pos[s] < v->pos[best]) best = s;
    }
    if (best < 0) return 1; /* not enough evictable slots */
    out[k] = best;
  }
  return 0;
}

static const char* last_error(void* user) {
  (void)user;
  return "fewer evictable slots than must be evicted";
}

static void destroy(tova_policy* self) { free(self); }

tova_policy* tova_policy_create(const char* args) {
  (void)args;
  tova_policy* p = (tova_policy*)calloc(1, sizeof(tova_policy));
  if (!p) return NULL;
  p->abi_version = TOVA_POLICY_ABI_VERSION;
  p->struct_size = sizeof(tova_policy);
  p->name = "oldest-first";
  p->flags = 0; /* needs no attention probabilities */
  p->select = select_oldest;
  p->last_error = last_error;
  p->destroy = destroy;
  return p;
}
