/* tova KV eviction policy ABI, version 2 (version 1 plugins still load).
 *
 * One C interface serves the built-in policies (window, sink, h2o, tova), policies loaded from a
 * shared library by the CLI (`tova run --policy-plugin ./libmy.so`), and Python subclasses of
 * tova.Policy. Per layer and per step, after the attention of the current token, the engine
 * hands the policy a view of the layer's slots and asks for `n_evict` victims (see
 * shared/spec/KV_POLICIES.md). The engine checks every answer: the right count, distinct, valid,
 * not protected; a wrong answer is an error, never undefined behaviour.
 *
 * A plugin library exports:
 *     tova_policy* tova_policy_create(const char* args);   // args from --policy-args, may be ""
 * returning a heap object the engine releases with its `destroy` callback. Calls into a plugin
 * cost an indirect call per layer and step; a Python policy costs a round trip into Python.
 *
 * Sequences (version 2): one engine may run many sequences, each with its own slots, and one
 * policy object serves all of them. `view->seq` says which sequence a call is for; `reset_seq`
 * clears one sequence's state. Per-slot state kept in `view->state` is per sequence already.
 * A version 1 plugin (no `seq`, no `reset_seq`) that has a `reset` callback keeps state the
 * engine cannot tell apart by sequence: the engine refuses it when n_seq > 1.
 *
 * Order of calls: for one (sequence, layer) the calls come in token order, on_insert before the
 * select() of the same token. Across layers they interleave as the engine likes: a step's last
 * select() per layer comes after every layer's attention (so that a GPU hands the probabilities
 * back once per step), after on_insert calls of later layers. Keep state per layer (view->layer)
 * and per sequence, not shared across layers.
 */
#ifndef TOVA_POLICY_PLUGIN_H
#define TOVA_POLICY_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TOVA_POLICY_ABI_VERSION 2u
#define TOVA_POLICY_ABI_VERSION_MIN 1u

/* flags */
#define TOVA_POLICY_NEEDS_PROBS 1u  /* select() reads probs / probs_mean */
#define TOVA_POLICY_EVERY_STEP 2u   /* call select() every step, with n_evict == 0 when nothing
                                       must go (for policies that accumulate, like H2O) */
#define TOVA_POLICY_MEAN_ONLY 4u    /* with NEEDS_PROBS: select() reads probs_mean only, so
                                       view->probs may be NULL (a GPU backend then copies one float
                                       per slot back, not one per query head and slot) */

typedef struct tova_policy_view {
  int32_t layer;            /* layer index */
  int32_t capacity;         /* C: slots kept after each step */
  int32_t n_slots;          /* size of the arrays below (C + tokens per step) */
  int32_t n_valid;          /* slots holding a token, the current one included */
  int32_t n_evict;          /* how many slots select() must return (may be 0) */
  int32_t n_heads;          /* query heads (rows of probs) */
  int64_t t;                /* absolute position of the current token */
  int32_t new_slot;         /* the slot the current token was written to */
  const int32_t* pos;       /* [n_slots] absolute position of each slot's token, -1 = empty */
  const uint8_t* protect;   /* [n_slots] 1 = must not be evicted (sinks, pinned system prompt) */
  const float* probs;       /* [n_heads * n_slots] attention probabilities of the current query
                               per head (row h at probs + h * n_slots), 0 for empty slots;
                               NULL unless TOVA_POLICY_NEEDS_PROBS */
  const float* probs_mean;  /* [n_slots] probs averaged over the query heads; NULL likewise */
  float* state;             /* [n_slots] per-slot float the policy owns (reset to 0 on insert) */
  int32_t seq;              /* v2: the sequence this call is for, in [0, n_seq) */
} tova_policy_view;

typedef struct tova_policy {
  uint32_t abi_version;     /* TOVA_POLICY_ABI_VERSION */
  uint32_t struct_size;     /* sizeof(tova_policy) */
  const char* name;
  uint32_t flags;           /* TOVA_POLICY_* */
  void* user;               /* passed back to every callback */

  /* A token was written into `slot` (view->new_slot). May be NULL. */
  void (*on_insert)(void* user, const tova_policy_view* view, int32_t slot);
  /* Write view->n_evict distinct slots to out. Return 0 on success; nonzero is an error whose
     text last_error() may give. Required. */
  int (*select)(void* user, const tova_policy_view* view, int32_t* out);
  /* The engine evicted these slots. May be NULL. */
  void (*on_evict)(void* user, const tova_policy_view* view, const int32_t* slots, int32_t n);
  /* The sequence was cleared. May be NULL. */
  void (*reset)(void* user);
  /* Release everything, the tova_policy included. May be NULL for static objects. */
  void (*destroy)(struct tova_policy* self);
  /* Text of the last error, or NULL. May be NULL. */
  const char* (*last_error)(void* user);
  /* v2: sequence `seq` was cleared. May be NULL (then `reset` is called, if set). Read only
     when abi_version >= 2 and struct_size covers it. */
  void (*reset_seq)(void* user, int32_t seq);
} tova_policy;

/* The size of a version 1 tova_policy (everything before reset_seq). */
#define TOVA_POLICY_V1_SIZE (offsetof(tova_policy, reset_seq))

typedef tova_policy* (*tova_policy_create_fn)(const char* args);

#ifdef __cplusplus
}
#endif

#endif /* TOVA_POLICY_PLUGIN_H */
