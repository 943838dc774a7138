"""A plain, slow numpy implementation of shared/spec/KV_POLICIES.md, on top of `llama_ref`.

Semantics implemented (section numbers of the spec):
- C = kv_size states kept per layer *after* each step; during a step the new token's own state is
  visible too, so attention sees up to C + 1 keys (§1).
- Per layer: insert the new token, attend over the valid entries, then evict (valid - C) entries
  chosen from all valid ones, the new token included (§3). Evicted states took part in the step.
- window / sink / h2o / tova / full (§4); scores in the model's compute dtype (float32 normally);
  ties -> smallest position; several at once -> lowest by (score, pos).
  * tova: score = (1/Hq) * sum over all query heads of that head's softmax probability.
  * h2o: acc += head-mean probability every step (the new token starts with its own); the
    `h2o_recent` (default C // 2) most recent positions, the new token included, are protected.
  * sink: positions < n_sink never evicted. `n_sink` also protects the first tokens under tova and
    h2o when given (the spec's optional TOVA sink); default 4 for sink, 0 otherwise.
  * full: never evicts; more than kv_size tokens is an error.
- Prompts are processed `exact`ly (§5): every row of a chunk attends over what was kept after the
  previous row plus its own token, and the policy evicts after each row. `chunk` only changes how
  many tokens go through one `forward` call (default: all, so the projections are matrix products
  and a 128-token run on SmolLM2 takes about a second); by construction the evictions are the same
  for any chunk, which the self-check confirms against chunk=1 (literally token by token).
  `prefill="chunked"` (§5): the `chunk` tokens of a forward call attend over what was kept before
  it plus their causal prefix, nothing evicted between them; after the chunk the policy evicts
  down to C by its rule on the chunk's last row (h2o adds that row once; tova_ema scores each of
  the chunk's tokens by that row, its first observation).
- tova_ema (docs/policies.md): ema = p for a token's first observation, then
  a * ema + (1 - a) * p every step.
- Positions `original` (§6): RoPE at the absolute position, applied before K is cached.
- Sliding-window layers (Gemma 3, §6) keep their window: a window policy with C = n_swa there,
  whatever `policy` and `kv_size` say (those apply to the global layers). The model's own mask
  already hides keys n_swa or more behind the query, so the state kept beyond that is never read:
  C = n_swa - 1 would give the same logits; the victims recorded for those layers are t - n_swa.

The engine is compared with `run_policy`'s victims (per layer, per step), kept sets and logits.
"""
from __future__ import annotations

import numpy as np

from .llama_ref import KVCache, LlamaRef

POLICIES = ("full", "window", "sink", "h2o", "tova", "tova_ema")
TOVA_EMA_DECAY = 0.95  # docs/policies.md


class _PolicyHook:
    """The attention hook of llama_ref: scores each row's keys and evicts from the cache."""

    def __init__(self, model: LlamaRef, cache: KVCache, *, kv_size: int, policy: str,
                 n_sink: int, h2o_recent: int):
        self.model = model
        self.cache = cache
        self.C = kv_size
        self.policy = policy
        self.n_sink = n_sink
        self.recent = h2o_recent
        self.n_head = model.hp.n_head
        self.acc = [dict() for _ in range(model.hp.n_layer)]  # h2o: pos -> accumulated score
        self.victims: dict[int, list[list[int]]] = {i: [] for i in range(model.hp.n_layer)}
        self.last_row: int | None = None  # chunked prefill: the position of the chunk's last row

    def select(self, layer: int, q_pos: int, key_pos: np.ndarray):
        return None  # the cache holds exactly the valid entries: nothing to hide

    def _evict(self, layer: int, q_pos: int, positions: list[int]) -> None:
        for p in positions:
            self.victims[layer].append([q_pos, p])
            self.acc[layer].pop(p, None)
        self.cache.evict(layer, positions)

    def observe(self, layer: int, q_pos: int, key_pos: np.ndarray, probs: np.ndarray) -> None:
        if self.model.hp.is_swa(layer):
            cached = self.cache.pos[layer]
            cached = np.sort(cached[cached <= q_pos])  # later rows of the chunk are not in yet
            n_swa = self.model.hp.n_swa
            if cached.size > n_swa:
                self._evict(layer, q_pos, [int(p) for p in cached[: cached.size - n_swa]])
            return
        if self.last_row is not None and q_pos != self.last_row:
            return  # chunked prefill: the policy acts on the chunk's last row alone
        n_valid = key_pos.size
        dt = probs.dtype.type
        head_mean = probs.sum(axis=0) / dt(self.n_head)  # (n_keys,), mean over ALL query heads
        if self.policy == "h2o":
            acc = self.acc[layer]
            for p, s in zip(key_pos.tolist(), head_mean):
                acc[p] = dt(acc.get(p, dt(0)) + s)
        elif self.policy == "tova_ema":  # kept tokens: a * ema + (1 - a) * p; those new: p
            acc, a = self.acc[layer], dt(TOVA_EMA_DECAY)
            for p, s in zip(key_pos.tolist(), head_mean):
                acc[p] = dt(a * acc[p] + (dt(1) - a) * s) if p in acc else s
        n_evict = n_valid - self.C
        if n_evict <= 0:
            return
        if self.policy == "full":
            raise ValueError(f"policy 'full': {n_valid} tokens exceed kv_size {self.C}")
        protected = key_pos < self.n_sink
        if self.policy in ("window", "sink"):
            score = key_pos.astype(np.float64)  # oldest first
        elif self.policy == "tova":
            score = head_mean
        elif self.policy == "tova_ema":  # docs/policies.md
            score = np.array([self.acc[layer][p] for p in key_pos.tolist()], dtype=head_mean.dtype)
        else:  # h2o
            score = np.array([self.acc[layer][p] for p in key_pos.tolist()], dtype=head_mean.dtype)
            recent = np.argsort(-key_pos, kind="stable")[: self.recent]
            protected = protected.copy()
            protected[recent] = True
        cand = np.flatnonzero(~protected)
        if cand.size < n_evict:
            raise ValueError(f"layer {layer}, t={q_pos}: {n_evict} to evict but only "
                             f"{cand.size} unprotected of {n_valid}")
        order = cand[np.lexsort((key_pos[cand], score[cand]))]  # by score, then smallest pos
        self._evict(layer, q_pos, sorted(int(p) for p in key_pos[order[:n_evict]]))


def run_policy(model_ref: LlamaRef, tokens, *, kv_size: int, policy: str,
               n_sink: int | None = None, h2o_recent: int | None = None,
               chunk: int | None = None, positions: str = "original", prefill: str = "exact") -> dict:
    """Feed `tokens` from position 0 under a fixed-size KV store.

    Returns dict(logits=(n_tokens, vocab) array, kept={layer: sorted positions kept at the end},
    victims={layer: [[t, pos], ...]} in eviction order (t = the step that evicted pos)).
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if kv_size < 1:
        raise ValueError(f"kv_size must be >= 1, got {kv_size}")
    tokens = np.asarray(tokens, np.int64).reshape(-1)
    chunk = tokens.size if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if prefill not in ("exact", "chunked"):
        raise ValueError(f"prefill must be 'exact' or 'chunked', got {prefill!r}")
    if n_sink is None:
        n_sink = 4 if policy == "sink" else 0
    if h2o_recent is None:
        h2o_recent = kv_size // 2
    if policy in ("sink", "tova", "h2o", "tova_ema") and n_sink >= kv_size:
        raise ValueError(f"n_sink {n_sink} must be < kv_size {kv_size}")
    if policy == "h2o" and n_sink + h2o_recent >= kv_size + 1:
        raise ValueError(f"h2o: n_sink + h2o_recent ({n_sink} + {h2o_recent}) leave nothing to "
                         f"evict among kv_size + 1 = {kv_size + 1}")
    cache = model_ref.new_cache()
    hook = _PolicyHook(model_ref, cache, kv_size=kv_size, policy=policy, n_sink=n_sink,
                       h2o_recent=h2o_recent)
    logits = []
    for s in range(0, tokens.size, chunk):
        if prefill == "chunked":
            hook.last_row = min(s + chunk, tokens.size) - 1
        logits.append(model_ref.forward(tokens[s: s + chunk], start_pos=s, cache=cache, hook=hook,
                                        positions=positions))
    kept = {layer: cache.positions(layer) for layer in range(model_ref.hp.n_layer)}
    return {"logits": np.concatenate(logits), "kept": kept, "victims": hook.victims}
