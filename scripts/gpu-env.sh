# Sourced on the NVIDIA machine by scripts/gpu-machine.sh: Vulkan through the EGL
# library's ICD (the GLX one fails headless), Debian's loader from devrun/, and GPU tests
# that must not skip.
RUN=${RUN:-$PWD/devrun}
printf '{"file_format_version":"1.0.1","ICD":{"library_path":"/usr/local/nvidia/lib64/libEGL_nvidia.so.0","api_version":"1.4.312"}}' > /tmp/nv_icd.json
export VK_DRIVER_FILES=/tmp/nv_icd.json
export LD_LIBRARY_PATH=$RUN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export WGPU_BACKEND=vulkan
export UNFOLD_REQUIRE_GPU=1 PYTHONUNBUFFERED=1
