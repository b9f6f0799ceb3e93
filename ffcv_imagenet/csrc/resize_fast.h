// The decoders' area resize of a window (csrc/jpeg_region.cpp), for the other C++ of the library.
#pragma once

#include <opencv2/core.hpp>

// window (CV_8UC3 RGB or CV_8UC1 plane) -> out (preallocated, same type): an exact box average first once
// the window is twice the output per side or more, then area_shrink_fast; enlarged by OpenCV's INTER_AREA.
void resize_fast(const cv::Mat &window, cv::Mat &out);
