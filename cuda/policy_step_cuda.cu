// The built-in policies' step on the device as a kernel of its own, a block a row, after the
// attention (attention_cuda.cu) wrote the probabilities (policy_step.cuh says what it does).
#include "cuda_check.h"
#include "kv_policy.h"
#include "launch.cuh"
#include "ops_cuda.h"
#include "policy_step.cuh"

namespace tova {
namespace cuda {

namespace {

__global__ void head_mean_kernel(const AttnDesc* rows, int n_head, float inv_head, const float* probs,
                                 float* means, const int32_t* idx_all, int32_t* victims) {
  const AttnDesc r = rows[blockIdx.x];
  head_mean_row(r, n_head, inv_head, probs, means, idx_all, victims);
}

}  // namespace

void head_mean(Queue s, const AttnDesc* rows, int n_rows, int n_head, float inv_head, const float* probs,
               float* means, const int32_t* idx, int32_t* victims) {
  if (n_rows <= 0) return;
  TOVA_LAUNCH(head_mean_kernel, static_cast<unsigned>(n_rows), kPolicyThreads, s)(rows, n_head, inv_head, probs, means, idx,
                                                                         victims);
  check_launch(s, "head_mean");
}

}  // namespace cuda
}  // namespace tova
