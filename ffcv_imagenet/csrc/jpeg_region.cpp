// Decode only the MCU-aligned region of a JPEG that holds a window, at a 1/2^k IDCT scale, and
// resize the window once: called from numba-compiled loader code through ctypes, without the GIL.
//
// libjpeg's partial decode: jpeg_skip_scanlines passes the rows above the window (entropy decoding
// only), jpeg_crop_scanline narrows the output to the iMCU columns around it, and decoding stops
// after its last row. One decompressor per thread is reused across images.
#include <Python.h>

#include <algorithm>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <vector>

#include <jpeglib.h>
#include <opencv2/imgproc.hpp>

#include "area_resize.h"
#include "resize_fast.h"

#if !defined(LIBJPEG_TURBO_VERSION_NUMBER) || LIBJPEG_TURBO_VERSION_NUMBER < 1005000
#error "ffcv_imagenet needs libjpeg-turbo 1.5 or newer (jpeg_crop_scanline, jpeg_skip_scanlines)"
#endif

namespace {

constexpr int kOk = 0;
constexpr int kCorrupt = -1;     // libjpeg error or warning: damaged data
constexpr int kBadWindow = -2;   // window outside the scaled image
constexpr int kNoRoom = -3;      // scratch buffer too small for the region
constexpr size_t kChannels = 3;
constexpr int kFastResize = -1;  // "interpolation" asking for resize_fast instead of one OpenCV mode
constexpr int kBoxFrom = 2;  // an integer box average first once the window is this many times the output
constexpr unsigned kSmallestScale = 8;  // libjpeg's smallest IDCT scale, 1/8

struct ErrorManager {
    jpeg_error_mgr pub;
    jmp_buf jump;
    int warnings;
};

void on_error(j_common_ptr cinfo) { longjmp(reinterpret_cast<ErrorManager *>(cinfo->err)->jump, 1); }

// Warnings (level -1) mean damaged data (TurboJPEG also fails on them); trace messages are ignored.
void on_message(j_common_ptr cinfo, int level) {
    if (level < 0) reinterpret_cast<ErrorManager *>(cinfo->err)->warnings++;
}

struct Decompressor {
    jpeg_decompress_struct cinfo;
    ErrorManager err;
    Decompressor() {
        cinfo.err = jpeg_std_error(&err.pub);
        err.pub.error_exit = on_error;
        err.pub.emit_message = on_message;
        jpeg_create_decompress(&cinfo);
    }
    ~Decompressor() { jpeg_destroy_decompress(&cinfo); }
};

thread_local Decompressor decompressor;
thread_local std::vector<uint8_t> boxed_bytes;  // resize_fast's intermediate, reused across images
thread_local std::vector<JSAMPLE> check_row;  // entropy_check's one decoded row
thread_local std::vector<JSAMPROW> rows;  // decode_rgb's row pointers into the caller's array

}  // namespace

// Window -> out, an area filter throughout, at a fraction of OpenCV's INTER_AREA cost at general ratios:
// once the window is twice the output per side or more, first an exact k x k box average (OpenCV's
// integer INTER_AREA path; the window trimmed by under k pixels to a multiple of k) that leaves it under
// twice the output; then the rest of the shrink by the same area weights as OpenCV's INTER_AREA in
// vectorised fixed point (area_shrink_fast; a bilinear step here aliased fine texture: fur, foliage,
// fabric). A window smaller than the output on a side is enlarged by OpenCV's INTER_AREA, as FFCV's
// path does.
void resize_fast(const cv::Mat &window, cv::Mat &out) {
    if (window.rows < out.rows || window.cols < out.cols) {
        cv::resize(window, out, out.size(), 0, 0, cv::INTER_AREA);
        return;
    }
    const int k = std::min(window.rows / out.rows, window.cols / out.cols);
    cv::Mat shrunk = window;
    if (k >= kBoxFrom) {
        const int height = window.rows / k * k, width = window.cols / k * k;
        const cv::Rect trimmed((window.cols - width) / 2, (window.rows - height) / 2, width, height);
        cv::Mat boxed = grown_mat(boxed_bytes, height / k, width / k, window.type());
        cv::resize(window(trimmed), boxed, boxed.size(), 0, 0, cv::INTER_AREA);
        shrunk = boxed;
    }
    if (shrunk.size() == out.size()) {
        shrunk.copyTo(out);
        return;
    }
    // Cannot fail: shrunk is at least the output on each side (k <= window / out per side), the one refusal.
    const auto shrink = shrunk.channels() == 1 ? area_shrink_fast_plane : area_shrink_fast;  // a YUV plane, or RGB
    shrink(shrunk.data, shrunk.rows, shrunk.cols, shrunk.step, out.data, out.rows, out.cols);
}

namespace {

void resize_window(const cv::Mat &window, cv::Mat &out, int interpolation) {
    if (interpolation == kFastResize) {
        resize_fast(window, out);
    } else {
        cv::resize(window, out, out.size(), 0, 0, interpolation);
    }
}

// Reads the header of ``source`` into the thread's decompressor and runs ``body`` on it. A libjpeg error
// (longjmp back here: body must hold no object with a destructor across libjpeg calls) gives kCorrupt;
// so does any warning, unless body returned another failure first. The decompressor is left reset.
template <typename Body>
int with_header(const uint8_t *source, uint64_t source_size, Body body) {
    jpeg_decompress_struct &cinfo = decompressor.cinfo;
    decompressor.err.warnings = 0;
    if (setjmp(decompressor.err.jump)) {
        jpeg_abort_decompress(&cinfo);
        return kCorrupt;
    }
    jpeg_mem_src(&cinfo, source, source_size);
    jpeg_read_header(&cinfo, TRUE);
    const int status = body(cinfo);
    jpeg_abort_decompress(&cinfo);
    if (status != kOk) return status;
    return decompressor.err.warnings ? kCorrupt : kOk;
}

}  // namespace

extern "C" {

// Window [top, bottom) x [left, right) in pixels of the 1/scale_denom-scaled image -> destination
// (out_h x out_w x 3, RGB), resized with an OpenCV interpolation or kFastResize (resize_fast).
// Returns kOk or a negative code; never longjmps out.
int crop_decode_resize(const uint8_t *source, uint64_t source_size, uint32_t scale_denom,
                       int32_t top, int32_t bottom, int32_t left, int32_t right,
                       uint8_t *scratch, uint64_t scratch_size,
                       uint8_t *destination, int32_t out_h, int32_t out_w, int32_t interpolation) {
    return with_header(source, source_size, [&](jpeg_decompress_struct &cinfo) {
        cinfo.out_color_space = JCS_RGB;
        cinfo.scale_num = 1;
        cinfo.scale_denom = scale_denom;
        cinfo.dct_method = JDCT_IFAST;  // as FFCV's TJFLAG_FASTDCT
        jpeg_start_decompress(&cinfo);
        if (top < 0 || left < 0 || top >= bottom || left >= right ||
            bottom > static_cast<int32_t>(cinfo.output_height) || right > static_cast<int32_t>(cinfo.output_width)) {
            return kBadWindow;
        }
        JDIMENSION xoffset = left, width = right - left;
        jpeg_crop_scanline(&cinfo, &xoffset, &width);  // widened to whole iMCU columns
        const size_t stride = width * kChannels;
        if (stride * (bottom - top) > scratch_size) return kNoRoom;
        if (top > 0) jpeg_skip_scanlines(&cinfo, top);
        while (cinfo.output_scanline < static_cast<JDIMENSION>(bottom)) {
            JSAMPROW row = scratch + (cinfo.output_scanline - top) * stride;
            jpeg_read_scanlines(&cinfo, &row, 1);
        }
        // the rows below the window are never decoded
        if (decompressor.err.warnings) return kCorrupt;
        cv::Mat region(bottom - top, width, CV_8UC3, scratch, stride);
        cv::Mat out(out_h, out_w, CV_8UC3, destination);
        resize_window(region.colRange(left - xoffset, right - xoffset), out, interpolation);
        return kOk;
    });
}

// kOk if every entropy-coded block of the JPEG decodes and its markers up to the end-of-image marker
// read without a single libjpeg error or warning (extra bytes before a marker, a damaged or cut scan),
// else kCorrupt. The conversion's pass-through check: what a full decode would report, at the cost of
// Huffman decoding alone (jpeg_skip_scanlines discards the coefficients of whole iMCU rows: no IDCT,
// no colour conversion). Only the last output row is decoded: skipping to the bottom decodes nothing.
int entropy_check(const uint8_t *source, uint64_t source_size) {
    return with_header(source, source_size, [](jpeg_decompress_struct &cinfo) {
        cinfo.scale_num = 1;
        cinfo.scale_denom = kSmallestScale;  // the one row decoded is 1/8 as wide
        cinfo.dct_method = JDCT_IFAST;
        cinfo.do_fancy_upsampling = FALSE;
        jpeg_start_decompress(&cinfo);
        check_row.resize(static_cast<size_t>(cinfo.output_width) * cinfo.output_components);
        if (cinfo.output_height > 1) jpeg_skip_scanlines(&cinfo, cinfo.output_height - 1);
        JSAMPROW row = check_row.data();
        jpeg_read_scanlines(&cinfo, &row, 1);
        jpeg_finish_decompress(&cinfo);  // reads on to the end-of-image marker
        return kOk;
    });
}

// The whole JPEG at full size, or at 1/scale_denom (libjpeg's DCT scaling, as PIL's draft mode asks for
// it) -> destination (height x width x 3, RGB), decoded as PIL decodes it
// (accurate integer IDCT, fancy upsampling), straight into the caller's array. kOk, or kCorrupt on
// a libjpeg error or warning in the scan (the caller falls back to PIL, which decodes what it can),
// or kBadWindow if the image is not height x width x 3. The markers after the scan are not read.
int decode_rgb(const uint8_t *source, uint64_t source_size, uint8_t *destination, int32_t height, int32_t width,
               int32_t scale_denom) {
    return with_header(source, source_size, [&](jpeg_decompress_struct &cinfo) {
        cinfo.scale_num = 1;
        cinfo.scale_denom = static_cast<unsigned int>(scale_denom);
        cinfo.out_color_space = JCS_RGB;
        cinfo.dct_method = JDCT_ISLOW;
        cinfo.do_fancy_upsampling = TRUE;
        jpeg_start_decompress(&cinfo);
        if (cinfo.output_height != static_cast<JDIMENSION>(height) ||
            cinfo.output_width != static_cast<JDIMENSION>(width) ||
            cinfo.output_components != static_cast<int>(kChannels)) {
            return kBadWindow;
        }
        const size_t stride = static_cast<size_t>(width) * kChannels;
        rows.resize(height);
        for (int32_t row = 0; row < height; row++) rows[row] = destination + row * stride;
        while (cinfo.output_scanline < cinfo.output_height) {
            jpeg_read_scanlines(&cinfo, rows.data() + cinfo.output_scanline,
                                cinfo.output_height - cinfo.output_scanline);
        }
        return kOk;
    });
}

// A window of an (height x width x 3) RGB image -> destination, with an OpenCV interpolation or kFastResize.
void crop_resize(const uint8_t *source, int32_t height, int32_t width,
                 int32_t top, int32_t bottom, int32_t left, int32_t right,
                 uint8_t *destination, int32_t out_h, int32_t out_w, int32_t interpolation) {
    cv::Mat image(height, width, CV_8UC3, const_cast<uint8_t *>(source));
    cv::Mat out(out_h, out_w, CV_8UC3, destination);
    resize_window(image.rowRange(top, bottom).colRange(left, right), out, interpolation);
}

}  // extern "C"

// A Python module only so that setuptools builds and installs the library; the functions are
// reached through ctypes (ffcv_imagenet.jpeg_region), as FFCV does for its own libffcv.
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jpeg_region",
                                    "Region JPEG decode; the functions are reached through ctypes", -1, nullptr};

PyMODINIT_FUNC PyInit__jpeg_region(void) { return PyModule_Create(&module); }
