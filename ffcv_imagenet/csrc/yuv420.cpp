// A window of a YUV 4:2:0 record -> RGB at the output size: called from numba-compiled loader code
// through ctypes, without the GIL.
//
// A record is its Y plane (height x width bytes), then its U (Cb) and V (Cr) planes, each
// ceil(height / 2) x ceil(width / 2) bytes (chroma sample (i, j) covers luma rows 2i, 2i + 1 and columns
// 2j, 2j + 1). The window is resized plane by plane with the decoders' area resize (resize_fast: 1.5
// bytes per pixel to filter against an RGB record's 3), then converted to RGB at the output size only.
// The chroma window is the luma window halved, widened to whole chroma samples (by one luma pixel at an
// odd edge); it is resized to the output's scale over the luma span it covers, and the part over the luma
// window is kept: at full size, an odd side's chroma is each sample repeated over its 2x2 block, as JPEG's.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include <opencv2/core.hpp>
#include <opencv2/core/hal/hal.hpp>

#include "resize_fast.h"

namespace {

constexpr int kChannels = 3;
constexpr int kOk = 0;
constexpr int kBadWindow = -2;

thread_local cv::Mat y_out;  // the luma plane at the output size, reused across images
thread_local std::vector<uint8_t> rgb_row;  // one output row's R, G and B runs, interleaved into the caller's row
thread_local std::vector<uint8_t> u_bytes, v_bytes;  // the chroma planes, whose size follows the window

// BT.601 full range (JFIF), as JPEG: R = Y + 1.402 Cr', G = Y - 0.344136 Cb' - 0.714136 Cr', B = Y + 1.772 Cb'
// (Cb' = Cb - 128, Cr' = Cr - 128), in 16-bit lanes the compiler vectorises 8 at a time: values in quarter
// levels, each product the high half of (chroma' * 64) x (coefficient * 4096). Within a level of the exact
// sum, rounded (OpenCV's YCrCb conversion, rounded to 3 decimals, is off by 2 at times).
constexpr int16_t kRedCr = 5743, kGreenCb = 1410, kGreenCr = 2925, kBlueCb = 7258;  // coefficient * 4096
constexpr int kChromaShift = 6, kQuarterBits = 2;

inline int16_t high_half(int16_t a, int16_t b) { return static_cast<int16_t>((static_cast<int32_t>(a) * b) >> 16); }

inline uint8_t quarters_to_byte(int16_t quarters) {
    const int16_t level = static_cast<int16_t>((quarters + (1 << (kQuarterBits - 1))) >> kQuarterBits);
    return static_cast<uint8_t>(level < 0 ? 0 : (level > 255 ? 255 : level));
}

// One row: planes at the output size -> R, G and B planes.
void to_rgb_planes(const uint8_t *__restrict y, const uint8_t *__restrict cb, const uint8_t *__restrict cr, int count,
                   uint8_t *__restrict r, uint8_t *__restrict g, uint8_t *__restrict b) {
    for (int i = 0; i < count; i++) {
        const int16_t luma = static_cast<int16_t>(y[i] << kQuarterBits);
        const int16_t blue_diff = static_cast<int16_t>((cb[i] - 128) * (1 << kChromaShift));
        const int16_t red_diff = static_cast<int16_t>((cr[i] - 128) * (1 << kChromaShift));
        r[i] = quarters_to_byte(static_cast<int16_t>(luma + high_half(red_diff, kRedCr)));
        g[i] = quarters_to_byte(static_cast<int16_t>(luma - high_half(blue_diff, kGreenCb) - high_half(red_diff, kGreenCr)));
        b[i] = quarters_to_byte(static_cast<int16_t>(luma + high_half(blue_diff, kBlueCb)));
    }
}

// How a chroma window fits the output along one axis: the luma window [start, end) widened to whole
// chroma samples spans [2 * (start / 2), 2 * ceil(end / 2)); resized at the output's scale it is `size`
// long, and the luma window starts `offset` into it.
struct ChromaFit {
    int first, count;  // the chroma samples read
    int size, offset;  // at the output's scale
};

ChromaFit fit_chroma(int start, int end, int out) {
    ChromaFit fit;
    fit.first = start / 2;
    fit.count = (end + 1) / 2 - fit.first;
    const double scale = static_cast<double>(out) / (end - start);
    fit.offset = static_cast<int>(std::lround((start - 2 * fit.first) * scale));
    fit.size = std::max(out + fit.offset, static_cast<int>(std::lround(2 * fit.count * scale)));
    return fit;
}

}  // namespace

extern "C" {

// Window [top, bottom) x [left, right) of a height x width YUV 4:2:0 record -> destination (out_h x out_w x 3,
// RGB). Returns kOk, or kBadWindow for a window outside the image.
int32_t yuv420_crop_resize(const uint8_t *source, int32_t height, int32_t width, int32_t top, int32_t bottom,
                           int32_t left, int32_t right, uint8_t *destination, int32_t out_h, int32_t out_w) {
    if (top < 0 || left < 0 || top >= bottom || left >= right || bottom > height || right > width) return kBadWindow;
    const int32_t chroma_h = (height + 1) / 2, chroma_w = (width + 1) / 2;
    uint8_t *luma = const_cast<uint8_t *>(source);
    uint8_t *cb = luma + static_cast<size_t>(height) * width;
    uint8_t *cr = cb + static_cast<size_t>(chroma_h) * chroma_w;
    const cv::Rect window(left, top, right - left, bottom - top);
    const ChromaFit rows = fit_chroma(top, bottom, out_h), columns = fit_chroma(left, right, out_w);
    const cv::Rect chroma_window(columns.first, rows.first, columns.count, rows.count);
    y_out.create(out_h, out_w, CV_8UC1);
    cv::Mat u_out = grown_mat(u_bytes, rows.size, columns.size, CV_8UC1);
    cv::Mat v_out = grown_mat(v_bytes, rows.size, columns.size, CV_8UC1);
    resize_fast(cv::Mat(height, width, CV_8UC1, luma)(window), y_out);
    resize_fast(cv::Mat(chroma_h, chroma_w, CV_8UC1, cb)(chroma_window), u_out);
    resize_fast(cv::Mat(chroma_h, chroma_w, CV_8UC1, cr)(chroma_window), v_out);
    // Row by row into the caller's pixels: the row's planes stay in L1 for the interleave (a vectorised shuffle;
    // the conversion writing interleaved bytes itself does not vectorise), no output-sized planes.
    if (rgb_row.size() < static_cast<size_t>(out_w) * kChannels) rgb_row.resize(static_cast<size_t>(out_w) * kChannels);
    uint8_t *r = rgb_row.data(), *g = r + out_w, *b = g + out_w;
    const uint8_t *planes[kChannels] = {r, g, b};
    const size_t out_stride = static_cast<size_t>(out_w) * kChannels;
    for (int32_t row = 0; row < out_h; row++) {
        to_rgb_planes(y_out.ptr(row), u_out.ptr(row + rows.offset) + columns.offset,
                      v_out.ptr(row + rows.offset) + columns.offset, out_w, r, g, b);
        cv::hal::merge8u(planes, destination + row * out_stride, out_w, kChannels);
    }
    return kOk;
}

}  // extern "C"
