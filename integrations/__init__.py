"""The built-in model families and accelerators, installed as ``surf_accel.integrations``.

Each family module declares a ``FAMILY`` (``surf_accel.family.Family``), each accelerator module its
``AcceleratorKind``; importing this package registers them, which ``surf_accel.registry`` does for the
core. A family or accelerator of the user's own registers the same way, from their code
(``surf_accel.register_family``, ``surf_accel.stages.register_accelerator``)."""

from surf_accel.family import register_family
from surf_accel.integrations import hunyuan_video, hunyuan_video15, wan
from surf_accel.integrations.accelerators import cache_dit, diffusers_caches, surf_teacache
from surf_accel.stages import register_accelerator

for _family in (wan.FAMILY, hunyuan_video.FAMILY, hunyuan_video15.FAMILY):
    register_family(_family)
for _kind in (surf_teacache.KIND, *diffusers_caches.KINDS, cache_dit.KIND):
    register_accelerator(_kind)
