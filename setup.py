"""The one compiled part, ffcv_imagenet._jpeg_region (region JPEG decode, OpenCV-exact area shrink, YUV 4:2:0
record decode); metadata
is in pyproject.toml.

Needs a C++ compiler and the headers of libjpeg-turbo >= 1.5 and OpenCV 4 (scripts/setup.sh).
"""
import subprocess

from setuptools import Extension, setup

OPENCV_FALLBACK_INCLUDE = "/usr/include/opencv4"


def opencv_include_dirs() -> list[str]:
    try:
        flags = subprocess.run(["pkg-config", "--cflags-only-I", "opencv4"], capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return [OPENCV_FALLBACK_INCLUDE]
    return [flag[2:] for flag in flags] or [OPENCV_FALLBACK_INCLUDE]


setup(ext_modules=[Extension(
    "ffcv_imagenet._jpeg_region",
    sources=["ffcv_imagenet/csrc/jpeg_region.cpp", "ffcv_imagenet/csrc/area_resize.cpp",
             "ffcv_imagenet/csrc/yuv420.cpp"],
    include_dirs=opencv_include_dirs(),
    libraries=["jpeg", "opencv_core", "opencv_imgproc"],
    # -ffp-contract=off: area_resize must round twice where OpenCV does, never once in a fused multiply-add
    extra_compile_args=["-O3", "-std=c++17", "-ffp-contract=off"],
    language="c++",
)])
