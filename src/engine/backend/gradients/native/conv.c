/*
 * Conv2D gradients (NHWC, dilation 1) as direct loops in WebAssembly SIMD, for the wasm backend:
 * - filter_gradient: dW[a, b, ci, co] = sum over n, p, q of
 *   x[n, p*sh + a - top, q*sw + b - left, ci] * dy[n, p, q, co];
 * - correlate: a valid correlation of a padded input with a filter, with bias and ReLU: the forward
 *   convolution, and (stride 1) the input gradient's correlation of the dilated, padded upstream
 *   gradient with the flipped, transposed filter.
 *
 * Why by hand. Expressed as a forward convolution (the portable formulation in conv2d.ts), the filter
 * gradient turns the upstream gradient into an image-sized filter that tfjs-backend-wasm transposes
 * and XNNPACK repacks on every call, after 4-D transposes of both operands; on a smallCnn training
 * step that overhead costs about as much as the arithmetic. Here x and dy are read where they lie
 * and dW is written in tfjs's filter layout [kh, kw, ci, co]: no transposes, no packing. For the input
 * gradient XNNPACK has no such overhead; the direct loop still measured 10% faster than its
 * convolution on smallCnn's layers (143 vs 160 ms for the five), more on the first layer (3 output
 * channels, where XNNPACK computes 8).
 *
 * Memory. The module imports tfjs-backend-wasm's memory and must touch it only through the pointers
 * it is given: no data segment, no globals, no stack (no address-taken locals or arrays that survive
 * optimisation). build.sh checks the output for that.
 *
 * Filter gradient loop order: per image and per tap (a, b), the output is tiled in blocks of 4 input
 * channels by 8 output channels (12 of the 16 SIMD registers: 8 accumulators, 2 for dy, 1 broadcast
 * x); the tile's accumulators stay in registers over all of the image's valid output positions, so dW
 * is read and written once per image, tap and tile. One image of x and dy (<= 256 KB for smallCnn)
 * stays in L2.
 */
#include <wasm_simd128.h>

#define INLINE static inline __attribute__((always_inline))

INLINE int ceil_div(int a, int b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }
INLINE int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
INLINE int max_int(int a, int b) { return a > b ? a : b; }
INLINE int min_int(int a, int b) { return a < b ? a : b; }

/*
 * One tile: CB input channels (1..4) by 4 * NV output channels (NV = 1 or 2 vectors), summed over the
 * output rows [p0, p1) and columns [q0, q1) of one image, added into dw (row stride out_c).
 */
INLINE void tile(const float* x, const float* dy, float* dw, const int CB, const int NV, int rows,
                 int cols, int x_col_step, int x_row_step, int dy_row_step, int out_c) {
  v128_t acc00 = wasm_f32x4_splat(0.f), acc01 = acc00, acc10 = acc00, acc11 = acc00;
  v128_t acc20 = acc00, acc21 = acc00, acc30 = acc00, acc31 = acc00;
  for (int r = 0; r < rows; r++) {
    const float* xp = x + r * x_row_step;
    const float* dp = dy + r * dy_row_step;
    for (int c = 0; c < cols; c++, xp += x_col_step, dp += out_c) {
      const v128_t d0 = wasm_v128_load(dp);
      const v128_t d1 = NV == 2 ? wasm_v128_load(dp + 4) : d0;
      v128_t s = wasm_v128_load32_splat(xp);
      acc00 = wasm_f32x4_add(acc00, wasm_f32x4_mul(s, d0));
      if (NV == 2) acc01 = wasm_f32x4_add(acc01, wasm_f32x4_mul(s, d1));
      if (CB > 1) {
        s = wasm_v128_load32_splat(xp + 1);
        acc10 = wasm_f32x4_add(acc10, wasm_f32x4_mul(s, d0));
        if (NV == 2) acc11 = wasm_f32x4_add(acc11, wasm_f32x4_mul(s, d1));
      }
      if (CB > 2) {
        s = wasm_v128_load32_splat(xp + 2);
        acc20 = wasm_f32x4_add(acc20, wasm_f32x4_mul(s, d0));
        if (NV == 2) acc21 = wasm_f32x4_add(acc21, wasm_f32x4_mul(s, d1));
      }
      if (CB > 3) {
        s = wasm_v128_load32_splat(xp + 3);
        acc30 = wasm_f32x4_add(acc30, wasm_f32x4_mul(s, d0));
        if (NV == 2) acc31 = wasm_f32x4_add(acc31, wasm_f32x4_mul(s, d1));
      }
    }
  }
#define FLUSH(row, acc, offset) \
  wasm_v128_store(dw + (row) * out_c + (offset), wasm_f32x4_add(wasm_v128_load(dw + (row) * out_c + (offset)), acc))
  FLUSH(0, acc00, 0);
  if (NV == 2) FLUSH(0, acc01, 4);
  if (CB > 1) {
    FLUSH(1, acc10, 0);
    if (NV == 2) FLUSH(1, acc11, 4);
  }
  if (CB > 2) {
    FLUSH(2, acc20, 0);
    if (NV == 2) FLUSH(2, acc21, 4);
  }
  if (CB > 3) {
    FLUSH(3, acc30, 0);
    if (NV == 2) FLUSH(3, acc31, 4);
  }
#undef FLUSH
}

/* Every output-channel block of one input-channel block of CB channels. */
INLINE void channel_block(const float* x, const float* dy, float* dw, const int CB, int rows, int cols,
                          int x_col_step, int x_row_step, int dy_row_step, int out_c) {
  int co = 0;
  for (; co + 8 <= out_c; co += 8) {
    tile(x, dy + co, dw + co, CB, 2, rows, cols, x_col_step, x_row_step, dy_row_step, out_c);
  }
  for (; co + 4 <= out_c; co += 4) {
    tile(x, dy + co, dw + co, CB, 1, rows, cols, x_col_step, x_row_step, dy_row_step, out_c);
  }
  // The last 1-3 output channels (layers whose width is not a multiple of 4): scalar sums.
  for (; co < out_c; co++) {
    for (int i = 0; i < CB; i++) {
      float sum = 0.f;
      for (int r = 0; r < rows; r++) {
        const float* xp = x + r * x_row_step + i;
        const float* dp = dy + r * dy_row_step + co;
        for (int c = 0; c < cols; c++, xp += x_col_step, dp += out_c) sum += *xp * *dp;
      }
      dw[i * out_c + co] += sum;
    }
  }
}

/*
 * dw [kernel_h, kernel_w, in_c, out_c] = the filter gradient of x [batch, in_h, in_w, in_c] and
 * dy [batch, out_h, out_w, out_c]; the caller checks that the shapes agree.
 */
__attribute__((export_name("filter_gradient"))) void filter_gradient(
    const float* x, const float* dy, float* dw, int batch, int in_h, int in_w, int in_c, int out_h,
    int out_w, int out_c, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_top,
    int pad_left) {
  const int dw_size = kernel_h * kernel_w * in_c * out_c;
  for (int i = 0; i < dw_size; i++) dw[i] = 0.f;
  const int x_col_step = stride_w * in_c;
  const int x_row_step = stride_h * in_w * in_c;
  const int dy_row_step = out_w * out_c;
  for (int n = 0; n < batch; n++) {
    const float* x_image = x + n * in_h * in_w * in_c;
    const float* dy_image = dy + n * out_h * out_w * out_c;
    for (int a = 0; a < kernel_h; a++) {
      // Output rows p whose input row p * stride_h + a - pad_top lies inside the image.
      const int p0 = max_int(0, ceil_div(pad_top - a, stride_h));
      const int p1 = min_int(out_h, floor_div(in_h - 1 + pad_top - a, stride_h) + 1);
      if (p0 >= p1) continue;
      for (int b = 0; b < kernel_w; b++) {
        const int q0 = max_int(0, ceil_div(pad_left - b, stride_w));
        const int q1 = min_int(out_w, floor_div(in_w - 1 + pad_left - b, stride_w) + 1);
        if (q0 >= q1) continue;
        const float* x_start = x_image + ((p0 * stride_h + a - pad_top) * in_w + q0 * stride_w + b - pad_left) * in_c;
        const float* dy_start = dy_image + (p0 * out_w + q0) * out_c;
        float* dw_tap = dw + (a * kernel_w + b) * in_c * out_c;
        const int rows = p1 - p0, cols = q1 - q0;
        int ci = 0;
        for (; ci + 4 <= in_c; ci += 4) {
          channel_block(x_start + ci, dy_start, dw_tap + ci * out_c, 4, rows, cols, x_col_step, x_row_step,
                        dy_row_step, out_c);
        }
        const int rest = in_c - ci;
        if (rest == 3) {
          channel_block(x_start + ci, dy_start, dw_tap + ci * out_c, 3, rows, cols, x_col_step, x_row_step,
                        dy_row_step, out_c);
        } else if (rest == 2) {
          channel_block(x_start + ci, dy_start, dw_tap + ci * out_c, 2, rows, cols, x_col_step, x_row_step,
                        dy_row_step, out_c);
        } else if (rest == 1) {
          channel_block(x_start + ci, dy_start, dw_tap + ci * out_c, 1, rows, cols, x_col_step, x_row_step,
                        dy_row_step, out_c);
        }
      }
    }
  }
}

/* Stores the first `lanes` lanes of v (all four when lanes >= 4, none when lanes <= 0). */
INLINE void store_lanes(float* out, v128_t v, int lanes) {
  if (lanes >= 4) { wasm_v128_store(out, v); return; }
  if (lanes > 0) out[0] = wasm_f32x4_extract_lane(v, 0);
  if (lanes > 1) out[1] = wasm_f32x4_extract_lane(v, 1);
  if (lanes > 2) out[2] = wasm_f32x4_extract_lane(v, 2);
}

/*
 * One output tile of the correlation: PX (4 or 1) output pixels of a row, px_step floats apart in the
 * input, by 4 * NV output channels from c0; in points at the tile's first input pixel, f at
 * [kh, kw, in_c, f_c] and bias (or null) at [f_c] (f_c: out_c rounded up to 4, the padding zero, so
 * that vector loads stay inside them). relu != 0 clamps the results at 0.
 */
INLINE void ctile(const float* in, const float* f, const float* bias, float* out, const int PX, const int NV,
                  int px_step, int in_w, int in_c, int f_c, int kh, int kw, int out_c, int c0, int relu) {
  const v128_t zero = wasm_f32x4_splat(0.f);
  const v128_t b0 = bias ? wasm_v128_load(bias + c0) : zero;
  const v128_t b1 = NV == 2 && bias ? wasm_v128_load(bias + c0 + 4) : zero;
  v128_t a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1;
  for (int a = 0; a < kh; a++) {
    for (int b = 0; b < kw; b++) {
      const float* ip = in + (a * in_w + b) * in_c;
      const float* fp = f + (a * kw + b) * in_c * f_c + c0;
      for (int k = 0; k < in_c; k++, fp += f_c) {
        const v128_t w0 = wasm_v128_load(fp);
        const v128_t w1 = NV == 2 ? wasm_v128_load(fp + 4) : w0;
        v128_t s = wasm_v128_load32_splat(ip + k);
        a00 = wasm_f32x4_add(a00, wasm_f32x4_mul(s, w0));
        if (NV == 2) a01 = wasm_f32x4_add(a01, wasm_f32x4_mul(s, w1));
        if (PX > 1) {
          s = wasm_v128_load32_splat(ip + px_step + k);
          a10 = wasm_f32x4_add(a10, wasm_f32x4_mul(s, w0));
          if (NV == 2) a11 = wasm_f32x4_add(a11, wasm_f32x4_mul(s, w1));
          s = wasm_v128_load32_splat(ip + 2 * px_step + k);
          a20 = wasm_f32x4_add(a20, wasm_f32x4_mul(s, w0));
          if (NV == 2) a21 = wasm_f32x4_add(a21, wasm_f32x4_mul(s, w1));
          s = wasm_v128_load32_splat(ip + 3 * px_step + k);
          a30 = wasm_f32x4_add(a30, wasm_f32x4_mul(s, w0));
          if (NV == 2) a31 = wasm_f32x4_add(a31, wasm_f32x4_mul(s, w1));
        }
      }
    }
  }
  if (relu) {
    a00 = wasm_f32x4_max(a00, zero);
    a01 = wasm_f32x4_max(a01, zero);
    a10 = wasm_f32x4_max(a10, zero);
    a11 = wasm_f32x4_max(a11, zero);
    a20 = wasm_f32x4_max(a20, zero);
    a21 = wasm_f32x4_max(a21, zero);
    a30 = wasm_f32x4_max(a30, zero);
    a31 = wasm_f32x4_max(a31, zero);
  }
  const int l0 = out_c - c0, l1 = out_c - c0 - 4;
  store_lanes(out + c0, a00, l0);
  if (NV == 2) store_lanes(out + c0 + 4, a01, l1);
  if (PX > 1) {
    store_lanes(out + out_c + c0, a10, l0);
    if (NV == 2) store_lanes(out + out_c + c0 + 4, a11, l1);
    store_lanes(out + 2 * out_c + c0, a20, l0);
    if (NV == 2) store_lanes(out + 2 * out_c + c0 + 4, a21, l1);
    store_lanes(out + 3 * out_c + c0, a30, l0);
    if (NV == 2) store_lanes(out + 3 * out_c + c0 + 4, a31, l1);
  }
}

INLINE void cpixels(const float* in, const float* f, const float* bias, float* out, const int PX, int px_step,
                    int in_w, int in_c, int f_c, int kh, int kw, int out_c, int relu) {
  int c0 = 0;
  for (; c0 + 8 <= f_c; c0 += 8) ctile(in, f, bias, out, PX, 2, px_step, in_w, in_c, f_c, kh, kw, out_c, c0, relu);
  if (c0 < f_c) ctile(in, f, bias, out, PX, 1, px_step, in_w, in_c, f_c, kh, kw, out_c, c0, relu);
}

/*
 * out [batch, out_h, out_w, out_c] = the valid correlation, strides (stride_h, stride_w), of
 * in [batch, in_h, in_w, in_c] with f [kh, kw, in_c, f_c], plus bias [f_c] (null: none), clamped at 0
 * when relu != 0: a forward convolution of an already padded input, and with stride 1 the input
 * gradient's correlation. The caller checks (out_h - 1) * stride_h + kh <= in_h and likewise for the
 * width. Tiles of 4 pixels by 8 channels.
 */
__attribute__((export_name("correlate"))) void correlate(const float* in, const float* f, const float* bias,
                                                          float* out, int batch, int in_h, int in_w, int in_c,
                                                          int out_h, int out_w, int out_c, int f_c, int kh, int kw,
                                                          int stride_h, int stride_w, int relu) {
  const int px_step = stride_w * in_c;
  for (int n = 0; n < batch; n++) {
    for (int i = 0; i < out_h; i++) {
      const float* in_row = in + ((n * in_h + i * stride_h) * in_w) * in_c;
      float* out_row = out + ((n * out_h + i) * out_w) * out_c;
      int j = 0;
      for (; j + 4 <= out_w; j += 4) {
        cpixels(in_row + j * px_step, f, bias, out_row + j * out_c, 4, px_step, in_w, in_c, f_c, kh, kw, out_c, relu);
      }
      for (; j < out_w; j++) {
        cpixels(in_row + j * px_step, f, bias, out_row + j * out_c, 1, px_step, in_w, in_c, f_c, kh, kw, out_c, relu);
      }
    }
  }
}
