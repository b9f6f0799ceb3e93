// The decoders' area resize of a window (csrc/jpeg_region.cpp), for the other C++ of the library.
#pragma once

#include <cstdint>
#include <vector>

#include <opencv2/core.hpp>

// window (CV_8UC3 RGB or CV_8UC1 plane) -> out (preallocated, same type): an exact box average first once
// the window is twice the output per side or more, then area_shrink_fast; enlarged by OpenCV's INTER_AREA.
void resize_fast(const cv::Mat &window, cv::Mat &out);

// A rows x cols Mat of `type` over `buffer`, which grows as needed and never shrinks: cv::Mat::create frees
// and reallocates whenever the size changes, which a random crop's intermediates do nearly every image.
inline cv::Mat grown_mat(std::vector<uint8_t> &buffer, int rows, int cols, int type) {
    const size_t bytes = static_cast<size_t>(rows) * cols * CV_ELEM_SIZE(type);
    if (buffer.size() < bytes) buffer.resize(bytes);
    return cv::Mat(rows, cols, type, buffer.data());
}
