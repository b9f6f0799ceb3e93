// OpenCV's INTER_AREA shrink, byte for byte (area_resize.cpp), for the other C++ of the library.
#pragma once

#include <cstddef>
#include <cstdint>

// source: height x width x 3 uint8 whose rows start source_stride bytes apart; out: out_height x
// out_width x 3, C-contiguous. Returns 0, or -1 when an output side is 0 or larger than the source's.
int area_resize_strided(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                        int out_height, int out_width);

// The same area shrink with the same weights in 8-bit fixed point, in passes the compiler vectorises
// (results differ by rounding): the decoders' resize, about 1.1-1.4x INTER_LINEAR's cost where OpenCV's
// INTER_AREA at a general ratio is 5-10x. Same arguments and return value.
int area_shrink_fast(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                     int out_height, int out_width);

// The same for one 8-bit plane (height x width bytes; a YUV record's Y, U or V), same return value.
int area_shrink_fast_plane(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                           int out_height, int out_width);
