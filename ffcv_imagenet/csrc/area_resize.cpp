// OpenCV's INTER_AREA shrink of an RGB uint8 image by a non-integer factor, with OpenCV's exact
// output and a fraction of its time: the conversion's resize of every photo above the stored size.
//
// OpenCV (resizeArea_) sums each source row across x into a float buffer, one weighted source pixel
// at a time, then sums those rows across y, and rounds. Its x sums step through a table of
// (destination, source, weight) entries with a load and a store per entry, which is most of its cost
// (1-3 ms for a 600-1200 px photo). Here every float operation is the same, in the same order, so the
// bytes are the same; only the memory layout changes so that each step is a plain loop over
// contiguous floats, which the compiler vectorises:
//   1. transpose the source (columns become rows, a pixel's three bytes stay together);
//   2. x sums: transposed row `dx` of the buffer = its source columns, weighted, added in order;
//   3. transpose the buffer back, so that each source row's sums are contiguous again;
//   4. y sums and rounding, row by row, as OpenCV does.
// Built with -ffp-contract=off: a fused multiply-add would round once where OpenCV rounds twice.
// On x86-64 the whole shrink is compiled twice, for SSE2 and for AVX2 (8 floats a step instead of 4;
// AVX2 brings no FMA, so the arithmetic is the same), and the AVX2 copy runs where the CPU has it.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "area_resize.h"

namespace {

constexpr int kChannels = 3;
constexpr int kOk = 0;
constexpr int kNotAShrink = -1;  // an output side larger than the input's, or an empty image
constexpr int kBlock = 32;       // transpose tile side, in pixels: both tiles stay in L1
constexpr double kNegligible = 1e-3;  // OpenCV ignores a partial source cell this thin

// One term of an area sum: destination index `dst` gets source index `src` times `weight`.
struct Term {
    int dst;
    int src;
    float weight;
};

// OpenCV's computeResizeAreaTab, term for term: the source cells each destination cell covers, in
// order, the partial cells at its two ends weighted by the covered fraction.
std::vector<Term> area_terms(int source_size, int output_size, double scale) {
    std::vector<Term> terms;
    for (int d = 0; d < output_size; d++) {
        double start = d * scale, end = start + scale;
        double cell = std::min(scale, source_size - start);
        int first_whole = static_cast<int>(std::ceil(start));
        int last_whole = std::min(static_cast<int>(std::floor(end)), source_size - 1);
        first_whole = std::min(first_whole, last_whole);
        if (first_whole - start > kNegligible)
            terms.push_back({d, first_whole - 1, static_cast<float>((first_whole - start) / cell)});
        for (int s = first_whole; s < last_whole; s++) terms.push_back({d, s, static_cast<float>(1.0 / cell)});
        if (end - last_whole > kNegligible)
            terms.push_back({d, last_whole, static_cast<float>(std::min(std::min(end - last_whole, 1.), cell) / cell)});
    }
    return terms;
}

// Per-thread scratch, grown as needed and reused: fresh multi-megabyte buffers would cost page faults.
thread_local std::vector<uint8_t> columns;   // the source transposed: width rows of height pixels
thread_local std::vector<float> x_sums_t;    // x sums, transposed: out_width rows of height pixels
thread_local std::vector<float> x_sums;      // x sums: height rows of out_width pixels
thread_local std::vector<float> y_sum;       // one output row before rounding

template <typename T>
T *sized(std::vector<T> &buffer, size_t count) {
    if (buffer.size() < count) buffer.resize(count);
    return buffer.data();
}

// One pixel moved as a whole word (4 bytes, or 4 floats): a single load and store instead of three of
// each. The word's last channel spills into the next pixel, so pixels must be written in an order
// where that one is written later, and the source must have a word's room after the pixel.
template <int Channels, typename T>
inline void move_pixel_word(const T *from, T *to) {
    T word[Channels + 1];
    std::memcpy(word, from, sizeof(word));
    std::memcpy(to, word, sizeof(word));
}

// out[c][r] = in[r][c] for a rows x cols image of 3-channel pixels whose rows start `in_stride` values
// apart, in tiles. Within a tile, row r writes output pixels (c, r) whose spilled channel lands on
// (c, r + 1), written next; the last row moves channel by channel (its spill would land on a written
// pixel, and its reads on the source's end).
template <typename T, int Channels = kChannels>
void transpose(const T *in, int rows, int cols, size_t in_stride, T *out) {
    for (int r0 = 0; r0 < rows; r0 += kBlock) {
        int r1 = std::min(rows, r0 + kBlock);
        for (int c0 = 0; c0 < cols; c0 += kBlock) {
            int c1 = std::min(cols, c0 + kBlock);
            for (int r = r0; r < r1; r++) {
                const T *from = in + static_cast<size_t>(r) * in_stride + static_cast<size_t>(c0) * Channels;
                T *to = out + (static_cast<size_t>(c0) * rows + r) * Channels;
                const size_t to_step = static_cast<size_t>(rows) * Channels;
                if (r + 1 < rows) {
                    for (int c = c0; c < c1; c++, from += Channels, to += to_step) move_pixel_word<Channels>(from, to);
                } else {
                    for (int c = c0; c < c1; c++, from += Channels, to += to_step) std::copy(from, from + Channels, to);
                }
            }
        }
    }
}

// A destination's terms are consecutive in the table; its weighted sum, in the table's order, over
// `length` values of each source line: out[i] = ((w0 * a[i] + w1 * b[i]) + w2 * c[i]) + ...
// OpenCV adds the first product to 0, which changes nothing. Sums of up to kUnrolled terms (every
// shrink by less than 3x) keep the running sum in a register; longer ones go through `out`.
constexpr int kUnrolled = 4;

template <int Terms, typename In>
void weighted_sum(const In *const *lines, const float *weights, size_t length, float *__restrict out) {
    for (size_t i = 0; i < length; i++) {
        float sum = lines[0][i] * weights[0];
        for (int t = 1; t < Terms; t++) sum = sum + lines[t][i] * weights[t];
        out[i] = sum;
    }
}

template <typename In>
void weighted_sum(const In *const *lines, const float *weights, int terms, size_t length, float *__restrict out) {
    switch (terms) {
        case 1: return weighted_sum<1>(lines, weights, length, out);
        case 2: return weighted_sum<2>(lines, weights, length, out);
        case 3: return weighted_sum<3>(lines, weights, length, out);
        case 4: return weighted_sum<4>(lines, weights, length, out);
        default:
            weighted_sum<kUnrolled>(lines, weights, length, out);
            for (int t = kUnrolled; t < terms; t++) {
                const In *__restrict line = lines[t];
                for (size_t i = 0; i < length; i++) out[i] = out[i] + line[i] * weights[t];
            }
    }
}

// Calls `apply(destination, lines, weights, count)` once per destination, with its source lines
// (`base` + source index * `stride`) and weights in the table's order.
template <typename In, typename Apply>
void for_each_destination(const std::vector<Term> &terms, const In *base, size_t stride, Apply apply) {
    std::vector<const In *> lines;
    std::vector<float> weights;
    for (size_t first = 0; first < terms.size();) {
        size_t last = first;
        lines.clear();
        weights.clear();
        for (; last < terms.size() && terms[last].dst == terms[first].dst; last++) {
            lines.push_back(base + terms[last].src * stride);
            weights.push_back(terms[last].weight);
        }
        apply(terms[first].dst, lines.data(), weights.data(), static_cast<int>(lines.size()));
        first = last;
    }
}

// OpenCV's saturate_cast<uchar>(float): round half to even, then clamp. Adding and taking away
// 1.5 * 2^23 rounds a float under 2^22 to an integer the way the FPU does (half to even), in a loop
// the compiler vectorises; a call to nearbyint per value would cost more than the sums.
constexpr float kRoundingShift = 12582912.f;

void round_row(const float *__restrict sums, size_t count, uint8_t *__restrict out) {
    for (size_t i = 0; i < count; i++) {
        float rounded = (sums[i] + kRoundingShift) - kRoundingShift;
        out[i] = static_cast<uint8_t>(static_cast<int>(std::min(255.f, std::max(0.f, rounded))));
    }
}

}  // namespace

// ---------------------------------------------------------------- the decoders' area shrink
// The same area weights as OpenCV's INTER_AREA in 8-bit fixed point (each output's weights sum to
// kUnit), summed in passes that are all plain loops over contiguous bytes, which the compiler
// vectorises 16 bytes at a time: down the columns (each output row a weighted sum of a few source
// rows), then, after a byte transpose, down the columns again for the other axis, and a transpose
// back. Each pass rounds to bytes: results differ from OpenCV's by a unit or two where it counts.
namespace {

constexpr int kWeightBits = 8;
constexpr int kUnit = 1 << kWeightBits;  // 255 * kUnit still fits the 16-bit sums

// One axis's weights: output d sums source rows first[d] + t, t < taps, times weights[d * taps + t]
// (padded with zero weights to the longest cell; first[d] moved back so that every row read exists).
struct AxisTaps {
    std::vector<int> first;
    std::vector<uint16_t> weights;
    int taps = 0;
};

void fill_taps(AxisTaps &axis, int source_size, int output_size) {
    const std::vector<Term> terms =
        area_terms(source_size, output_size, 1. / (static_cast<double>(output_size) / source_size));
    std::vector<int> first(output_size, source_size), last(output_size, 0);
    for (const Term &term : terms) {
        first[term.dst] = std::min(first[term.dst], term.src);
        last[term.dst] = std::max(last[term.dst], term.src);
    }
    axis.taps = 1;
    for (int d = 0; d < output_size; d++) axis.taps = std::max(axis.taps, last[d] - first[d] + 1);
    std::vector<float> exact(static_cast<size_t>(output_size) * axis.taps, 0.f);
    axis.first.resize(output_size);
    for (int d = 0; d < output_size; d++) axis.first[d] = std::min(first[d], source_size - axis.taps);
    for (const Term &term : terms) {
        exact[static_cast<size_t>(term.dst) * axis.taps + term.src - axis.first[term.dst]] += term.weight;
    }
    axis.weights.resize(exact.size());
    for (int d = 0; d < output_size; d++) {  // rounded, the largest weight taking up the remainder
        int sum = 0, largest = 0;
        for (int t = 0; t < axis.taps; t++) {
            const size_t at = static_cast<size_t>(d) * axis.taps + t;
            axis.weights[at] = static_cast<uint16_t>(std::lround(exact[at] * kUnit));
            sum += axis.weights[at];
            if (exact[at] > exact[static_cast<size_t>(d) * axis.taps + largest]) largest = t;
        }
        axis.weights[static_cast<size_t>(d) * axis.taps + largest] += kUnit - sum;
    }
}

// The last few axes' taps, per (source, output) size, per thread: a yuv420 record's two chroma planes share
// theirs, a validation set's centre crops and a conversion's photos repeat sizes; filled in turn.
struct CachedTaps {
    int source_size = -1, output_size = -1;
    AxisTaps taps;
};
constexpr int kCachedAxes = 8;
thread_local CachedTaps cached_axes[kCachedAxes];
thread_local int next_cached_axis = 0;

// The taps of one axis, from the cache or filled into its next entry, never into `keep`'s (the other
// axis's taps of the same shrink, still in use).
const AxisTaps &taps_for(int source_size, int output_size, const AxisTaps *keep = nullptr) {
    for (const CachedTaps &entry : cached_axes) {
        if (entry.source_size == source_size && entry.output_size == output_size) return entry.taps;
    }
    if (&cached_axes[next_cached_axis].taps == keep) next_cached_axis = (next_cached_axis + 1) % kCachedAxes;
    CachedTaps &entry = cached_axes[next_cached_axis];
    next_cached_axis = (next_cached_axis + 1) % kCachedAxes;
    fill_taps(entry.taps, source_size, output_size);
    entry.source_size = source_size;
    entry.output_size = output_size;
    return entry.taps;
}

thread_local std::vector<uint8_t> down_rows, down_columns, across_columns;
thread_local std::vector<uint32_t> long_sums;  // sum_down's row sums for taps beyond the unrolled ones

template <int Taps>
void weighted_rows(const uint8_t *row, size_t stride, const uint16_t *weights, size_t length, uint8_t *__restrict out) {
    uint16_t w[Taps];
    const uint8_t *rows[Taps];
    for (int t = 0; t < Taps; t++) {
        w[t] = weights[t];
        rows[t] = row + t * stride;
    }
    for (size_t i = 0; i < length; i++) {
        uint16_t sum = kUnit / 2;
        for (int t = 0; t < Taps; t++) sum = static_cast<uint16_t>(sum + w[t] * rows[t][i]);
        out[i] = static_cast<uint8_t>(sum >> kWeightBits);
    }
}

// Each output row of `out` (`length` bytes, contiguous rows) from its taps over the rows of `source`.
void sum_down(const uint8_t *source, size_t stride, const AxisTaps &axis, int out_rows, size_t length, uint8_t *out) {
    for (int d = 0; d < out_rows; d++) {
        const uint8_t *row = source + static_cast<size_t>(axis.first[d]) * stride;
        const uint16_t *weights = axis.weights.data() + static_cast<size_t>(d) * axis.taps;
        uint8_t *to = out + static_cast<size_t>(d) * length;
        switch (axis.taps) {
            case 1: weighted_rows<1>(row, stride, weights, length, to); break;
            case 2: weighted_rows<2>(row, stride, weights, length, to); break;
            case 3: weighted_rows<3>(row, stride, weights, length, to); break;
            case 4: weighted_rows<4>(row, stride, weights, length, to); break;
            default: {  // a shrink by 3x or more: not the decoders' after their box average
                uint32_t *sums = sized(long_sums, length);
                std::fill(sums, sums + length, static_cast<uint32_t>(kUnit / 2));
                for (int t = 0; t < axis.taps; t++)
                    for (size_t i = 0; i < length; i++) sums[i] += weights[t] * row[t * stride + i];
                for (size_t i = 0; i < length; i++) to[i] = static_cast<uint8_t>(sums[i] >> kWeightBits);
            }
        }
    }
}

}  // namespace

// transpose<uint8_t, 1> for a plane, 8 x 8 bytes at a time in SSE2 registers (a byte-wide tile loop moves
// one byte per step: most of a plane's shrink); the edges past the last whole tile byte by byte.
void transpose_plane(const uint8_t *in, int rows, int cols, size_t in_stride, uint8_t *out) {
    int whole_rows = 0, whole_cols = 0;
#if defined(__SSE2__)
    whole_rows = rows / 8 * 8;
    whole_cols = cols / 8 * 8;
    for (int r = 0; r < whole_rows; r += 8) {
        for (int c = 0; c < whole_cols; c += 8) {
            __m128i row[8];
            for (int i = 0; i < 8; i++)
                row[i] = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(in + (r + i) * in_stride + c));
            const __m128i a0 = _mm_unpacklo_epi8(row[0], row[1]), a1 = _mm_unpacklo_epi8(row[2], row[3]);
            const __m128i a2 = _mm_unpacklo_epi8(row[4], row[5]), a3 = _mm_unpacklo_epi8(row[6], row[7]);
            const __m128i b0 = _mm_unpacklo_epi16(a0, a1), b1 = _mm_unpackhi_epi16(a0, a1);
            const __m128i b2 = _mm_unpacklo_epi16(a2, a3), b3 = _mm_unpackhi_epi16(a2, a3);
            const __m128i pairs[4] = {_mm_unpacklo_epi32(b0, b2), _mm_unpackhi_epi32(b0, b2),
                                      _mm_unpacklo_epi32(b1, b3), _mm_unpackhi_epi32(b1, b3)};
            for (int i = 0; i < 4; i++) {  // columns 2i and 2i + 1, 8 rows each
                _mm_storel_epi64(reinterpret_cast<__m128i *>(out + static_cast<size_t>(c + 2 * i) * rows + r), pairs[i]);
                _mm_storel_epi64(reinterpret_cast<__m128i *>(out + static_cast<size_t>(c + 2 * i + 1) * rows + r),
                                 _mm_unpackhi_epi64(pairs[i], pairs[i]));
            }
        }
    }
#endif
    for (int r = 0; r < rows; r++) {
        const int first_col = r < whole_rows ? whole_cols : 0;  // whole tiles already moved
        for (int c = first_col; c < cols; c++) out[static_cast<size_t>(c) * rows + r] = in[r * in_stride + c];
    }
}

template <int Channels>
int area_shrink_fast_planes(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                            int out_height, int out_width) {
    if (out_height < 1 || out_width < 1 || out_height > height || out_width > width) return kNotAShrink;
    const AxisTaps &x_taps = taps_for(width, out_width);
    const AxisTaps &y_taps = taps_for(height, out_height, &x_taps);
    const size_t row_length = static_cast<size_t>(width) * Channels;
    const size_t column_length = static_cast<size_t>(out_height) * Channels;
    uint8_t *down = sized(down_rows, static_cast<size_t>(out_height) * row_length);
    sum_down(source, source_stride, y_taps, out_height, row_length, down);
    uint8_t *columns_t = sized(down_columns, static_cast<size_t>(width) * column_length);
    if (Channels == 1) {
        transpose_plane(down, out_height, width, row_length, columns_t);
    } else {
        transpose<uint8_t, Channels>(down, out_height, width, row_length, columns_t);
    }
    uint8_t *across_t = sized(across_columns, static_cast<size_t>(out_width) * column_length);
    sum_down(columns_t, column_length, x_taps, out_width, column_length, across_t);
    if (Channels == 1) {
        transpose_plane(across_t, out_width, out_height, column_length, out);
    } else {
        transpose<uint8_t, Channels>(across_t, out_width, out_height, column_length, out);
    }
    return kOk;
}

int area_shrink_fast(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                     int out_height, int out_width) {
    return area_shrink_fast_planes<kChannels>(source, height, width, source_stride, out, out_height, out_width);
}

int area_shrink_fast_plane(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                           int out_height, int out_width) {
    return area_shrink_fast_planes<1>(source, height, width, source_stride, out, out_height, out_width);
}

namespace {

// The exact shrink; inlined whole (with every helper above) into each of the copies below.
__attribute__((always_inline)) inline int exact_area_resize(const uint8_t *source, int height, int width,
                                                            size_t source_stride, uint8_t *out, int out_height,
                                                            int out_width) {
    if (out_height < 1 || out_width < 1 || out_height > height || out_width > width) return kNotAShrink;
    // OpenCV's scale is the inverse of output / input, which can differ from input / output in its last bit
    const double scale_x = 1. / (static_cast<double>(out_width) / width);
    const double scale_y = 1. / (static_cast<double>(out_height) / height);
    const std::vector<Term> x_terms = area_terms(width, out_width, scale_x);
    const std::vector<Term> y_terms = area_terms(height, out_height, scale_y);
    const size_t pixels_in = static_cast<size_t>(height) * width * kChannels;
    const size_t pixels_mid = static_cast<size_t>(height) * out_width * kChannels;
    uint8_t *source_columns = sized(columns, pixels_in);
    transpose(source, height, width, source_stride, source_columns);
    // x sums of every source row at once: transposed row d sums whole source columns
    const size_t column_length = static_cast<size_t>(height) * kChannels;
    float *sums_t = sized(x_sums_t, pixels_mid);
    for_each_destination(x_terms, source_columns, column_length,
                         [&](int d, const uint8_t *const *lines, const float *weights, int count) {
                             weighted_sum(lines, weights, count, column_length, sums_t + d * column_length);
                         });
    float *sums = sized(x_sums, pixels_mid);
    transpose(sums_t, out_width, height, column_length, sums);
    // y sums, one output row at a time, rounded
    const size_t row_length = static_cast<size_t>(out_width) * kChannels;
    float *row_sum = sized(y_sum, row_length);
    for_each_destination(y_terms, static_cast<const float *>(sums), row_length,
                         [&](int d, const float *const *lines, const float *weights, int count) {
                             weighted_sum(lines, weights, count, row_length, row_sum);
                             round_row(row_sum, row_length, out + d * row_length);
                         });
    return kOk;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define AREA_RESIZE_HAS_AVX2 1
__attribute__((target("avx2"), flatten)) int exact_area_resize_avx2(const uint8_t *source, int height, int width,
                                                                    size_t source_stride, uint8_t *out,
                                                                    int out_height, int out_width) {
    return exact_area_resize(source, height, width, source_stride, out, out_height, out_width);
}
#endif

__attribute__((flatten)) int exact_area_resize_baseline(const uint8_t *source, int height, int width,
                                                        size_t source_stride, uint8_t *out, int out_height,
                                                        int out_width) {
    return exact_area_resize(source, height, width, source_stride, out, out_height, out_width);
}

// Which copy runs: the AVX2 one where the CPU has it, unless area_resize_use_avx2(0) said otherwise (tests).
bool use_avx2 = [] {
#ifdef AREA_RESIZE_HAS_AVX2
    return __builtin_cpu_supports("avx2") != 0;
#else
    return false;
#endif
}();

}  // namespace

int area_resize_strided(const uint8_t *source, int height, int width, size_t source_stride, uint8_t *out,
                        int out_height, int out_width) {
#ifdef AREA_RESIZE_HAS_AVX2
    if (use_avx2) return exact_area_resize_avx2(source, height, width, source_stride, out, out_height, out_width);
#endif
    return exact_area_resize_baseline(source, height, width, source_stride, out, out_height, out_width);
}

extern "C" {

// source: height x width x 3 uint8, C-contiguous; out: out_height x out_width x 3. Returns 0, or
// kNotAShrink when an output side is 0 or larger than the source's (OpenCV would enlarge instead).
int area_resize(const uint8_t *source, int height, int width, uint8_t *out, int out_height, int out_width) {
    return area_resize_strided(source, height, width, static_cast<size_t>(width) * kChannels, out, out_height,
                               out_width);
}

// The fixed-point shrink (area_shrink_fast) of a C-contiguous image: for pixels a lossy JPEG encode follows.
int area_shrink(const uint8_t *source, int height, int width, uint8_t *out, int out_height, int out_width) {
    return area_shrink_fast(source, height, width, static_cast<size_t>(width) * kChannels, out, out_height,
                            out_width);
}

// Asks for the AVX2 copy (1) or the SSE2 one (0); returns which now runs: 1 only where the CPU has AVX2.
int area_resize_use_avx2(int wanted) {
#ifdef AREA_RESIZE_HAS_AVX2
    use_avx2 = wanted != 0 && __builtin_cpu_supports("avx2");
#endif
    return use_avx2 ? 1 : 0;
}

}  // extern "C"
