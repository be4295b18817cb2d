// Schemas of surf_accel's compiled ops. Kernels register per device in csrc/cpu and csrc/cuda;
// fake (meta) kernels for torch.compile are registered from Python (surf_accel/ops/latent_ops.py).
#include <torch/library.h>

TORCH_LIBRARY(surf_accel, m) {
  m.def("reshift_downsample(Tensor latents, Tensor model_output, Tensor noise, float sigma, "
        "float sigma_new, int factor, bool paper) -> Tensor");
  m.def("upsample_mix(Tensor latents, Tensor noise, float sigma, int factor, bool bilinear) -> Tensor");
  m.def("guided_step(Tensor latents, Tensor v_cond, Tensor? v_uncond, float guidance_scale, "
        "float sigma, float sigma_next) -> Tensor");
}
