// Fused gather -> GEMM -> scatter sparse convolution for CPU (forward, grad input, grad weight).
//
// The pure-PyTorch engine (functional.py) runs three passes per chunk of pairs: a gather of input
// rows into a buffer, one mm per kernel offset, and an index_add_ into the output. Here the three
// happen per tile while the tile is in cache:
//
//   apply_map:   output rows are cut into fixed blocks, which the threads take one at a time
//                (dynamic schedule: blocks differ in cost). For each offset k the
//                block's pairs (at most one per output row, so no two pairs of a tile share an
//                output row) are copied into a thread-local buffer, multiplied by W[k] with one
//                small single-threaded GEMM, and added into the output rows. Each output row is
//                owned by one task, so there are no atomics, and its sum runs in a fixed order
//                (centre offset first, then k = 0..K-1). Under inference the block's epilogue applies
//                an eval-mode BatchNorm's per-channel scale and shift, a residual and ReLU in cache.
//   weight_grad: one task per offset; dW[k] accumulates its tiles of pairs in a fixed order.
//
// Blocks and tiles depend only on the map and the channel counts, never on the number of threads,
// so results are bit-identical at any thread count. The GEMM is the BLAS that libtorch links
// (sgemm_/dgemm_, MKL on x86 builds), forced to one thread inside the parallel region.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <cstring>
#include <memory>
#include <vector>

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*);
int MKL_Set_Num_Threads_Local(int);  // the C entry (mkl_set_num_threads_local is the Fortran one, int*)
}

namespace {

// Column-major BLAS called on row-major data: row-major C (m x n) = A (m x k) @ B (k x n) is
// column-major C^T = B^T @ A^T, so the operands are passed swapped.
inline void gemm(char tb, char ta, int n, int m, int k, float alpha, const float* b, int ldb, const float* a, int lda,
                 float beta, float* c, int ldc) {
  sgemm_(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}
inline void gemm(char tb, char ta, int n, int m, int k, double alpha, const double* b, int ldb, const double* a,
                 int lda, double beta, double* c, int ldc) {
  dgemm_(&tb, &ta, &n, &m, &k, &alpha, b, &ldb, a, &lda, &beta, c, &ldc);
}

// 64-byte aligned scratch, so the BLAS sees the same alignment whichever thread runs a tile.
template <typename T>
struct Scratch {
  T* ptr = nullptr;
  explicit Scratch(size_t n) {
    size_t bytes = ((n * sizeof(T) + 63) / 64) * 64;
    ptr = static_cast<T*>(std::aligned_alloc(64, bytes > 0 ? bytes : 64));
    TORCH_CHECK(ptr != nullptr, "fused sparse conv: out of memory for a ", bytes, "-byte tile buffer");
  }
  ~Scratch() { std::free(ptr); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// A thread's two tile buffers (rows x c_a and rows x c_b), made inside an OpenMP region. An
// allocation failure must not throw out of the region: it is kept in `error` (rethrown after the
// region by the caller) and the pointers stay null, so the thread skips every task.
template <typename T>
struct TileBuffers {
  std::unique_ptr<Scratch<T>> a_, b_;
  T* a = nullptr;
  T* b = nullptr;
  TileBuffers(int64_t rows, int64_t c_a, int64_t c_b, std::exception_ptr& error) {
    try {
      a_ = std::make_unique<Scratch<T>>(static_cast<size_t>(rows * c_a));
      b_ = std::make_unique<Scratch<T>>(static_cast<size_t>(rows * c_b));
      a = a_->ptr;
      b = b_->ptr;
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
  }
  bool ok() const { return a != nullptr && b != nullptr; }
};

// One BLAS thread inside our parallel region (restored when the task ends).
struct OneBlasThread {
  int previous;
  OneBlasThread() : previous(MKL_Set_Num_Threads_Local(1)) {}
  ~OneBlasThread() { MKL_Set_Num_Threads_Local(previous); }
};

// Add a tile of products into their output rows. Cloned for AVX-512 / AVX2 / baseline x86-64 and
// picked at load time, so one build runs on every x86 CPU at its widest vectors (elsewhere: plain).
// An elementwise add: every clone gives the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define LIMA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LIMA_CLONES
#endif

LIMA_CLONES void scatter_add(float* out, const int64_t* rows, const float* src, int64_t m, int64_t c) {
  for (int64_t p = 0; p < m; ++p) {
    float* dst = out + rows[p] * c;
    const float* s = src + p * c;
    for (int64_t j = 0; j < c; ++j) dst[j] += s[j];
  }
}
LIMA_CLONES void scatter_add(double* out, const int64_t* rows, const double* src, int64_t m, int64_t c) {
  for (int64_t p = 0; p < m; ++p) {
    double* dst = out + rows[p] * c;
    const double* s = src + p * c;
    for (int64_t j = 0; j < c; ++j) dst[j] += s[j];
  }
}

template <typename T>
void apply_map_impl(const T* x, const T* w, const int64_t* in_idx, const int64_t* out_idx, const int64_t* starts,
                    int64_t K, int64_t identity, const T* scale, const T* bias, const T* residual, bool relu, bool transpose_weight,
                    int64_t c_in, int64_t c_out, int64_t n_out, int64_t block_rows, int64_t n_blocks, T* out) {
  // W[k] is (c_in, c_out) row-major, or (c_out, c_in) when transpose_weight (we then multiply by W[k]^T).
  const char tb = transpose_weight ? 'T' : 'N';
  const int ldb = static_cast<int>(transpose_weight ? c_in : c_out);
  const int64_t w_stride = c_in * c_out;
  // Blocks differ in cost (pairs per block) and the deep levels have few of them, so threads take
  // blocks one at a time (dynamic schedule); which thread runs a block does not change its sums.
  std::exception_ptr error;
#pragma omp parallel num_threads(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_blocks)))
  {
    OneBlasThread one;
    TileBuffers<T> buffers(block_rows, c_in, c_out, error);
    T* gbuf = buffers.a;  // the block's gathered input rows
    T* pbuf = buffers.b;  // their products
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < n_blocks; ++b) {
      if (!buffers.ok()) continue;
      const int64_t r0 = b * block_rows;
      const int64_t rows = std::min(block_rows, n_out - r0);
      T* o = out + r0 * c_out;
      if (identity >= 0) {  // centre offset: row i -> row i, a GEMM on the block's own rows
        gemm(tb, 'N', static_cast<int>(c_out), static_cast<int>(rows), static_cast<int>(c_in), T(1),
             w + identity * w_stride, ldb, x + r0 * c_in, static_cast<int>(c_in), T(0), o, static_cast<int>(c_out));
      } else {
        std::memset(o, 0, sizeof(T) * rows * c_out);
      }
      if (bias != nullptr && scale == nullptr) {
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < c_out; ++c) o[r * c_out + c] += bias[c];
      }
      for (int64_t k = 0; k < K; ++k) {
        const int64_t s = starts[k * (n_blocks + 1) + b], e = starts[k * (n_blocks + 1) + b + 1];
        const int64_t m = e - s;
        if (m <= 0 || k == identity) continue;
        for (int64_t p = 0; p < m; ++p) std::memcpy(gbuf + p * c_in, x + in_idx[s + p] * c_in, sizeof(T) * c_in);
        gemm(tb, 'N', static_cast<int>(c_out), static_cast<int>(m), static_cast<int>(c_in), T(1), w + k * w_stride, ldb,
             gbuf, static_cast<int>(c_in), T(0), pbuf, static_cast<int>(c_out));
        scatter_add(out, out_idx + s, pbuf, m, c_out);
      }
      // Epilogue while the block is still in cache (inference): * scale + bias (an eval-mode
      // BatchNorm, so its scale need not be folded into a copy of the kernel), + residual, ReLU.
      if (scale != nullptr || residual != nullptr || relu) {
        const T* res = residual != nullptr ? residual + r0 * c_out : nullptr;
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t c = 0; c < c_out; ++c) {
            const int64_t i = r * c_out + c;
            T v = o[i];
            if (scale != nullptr) v = v * scale[c] + (bias != nullptr ? bias[c] : T(0));
            if (res != nullptr) v += res[i];
            o[i] = relu && v < T(0) ? T(0) : v;
          }
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

template <typename T>
void weight_grad_impl(const T* x, const T* g, const int64_t* in_idx, const int64_t* out_idx, const int64_t* bounds,
                      int64_t K, int64_t identity, int64_t n_rows, int64_t c_in, int64_t c_out, int64_t tile, T* dw) {
  // dW[k] (c_in x c_out) = sum over pairs of x[in]^T g[out]; column-major: dW^T = g_tile^T @ x_tile.
  // Offsets differ in size (the centre has every row), so threads take them one at a time
  // (dynamic schedule); which thread runs an offset does not change its sum.
  std::exception_ptr error;
#pragma omp parallel num_threads(std::max(1, at::get_num_threads()))
  {
    OneBlasThread one;
    TileBuffers<T> buffers(tile, c_in, c_out, error);
    T* gx = buffers.a;  // a tile's input rows
    T* gg = buffers.b;  // and their output gradients
#pragma omp for schedule(dynamic, 1)
    for (int64_t k = 0; k < K; ++k) {
      if (!buffers.ok()) continue;
      T* d = dw + k * c_in * c_out;
      if (k == identity) {  // every row to itself: no gather, fixed tiles of rows
        for (int64_t s = 0; s < n_rows; s += tile) {
          const int m = static_cast<int>(std::min(tile, n_rows - s));
          gemm('N', 'T', static_cast<int>(c_out), static_cast<int>(c_in), m, T(1), g + s * c_out,
               static_cast<int>(c_out), x + s * c_in, static_cast<int>(c_in), s == 0 ? T(0) : T(1), d,
               static_cast<int>(c_out));
        }
        if (n_rows == 0) std::memset(d, 0, sizeof(T) * c_in * c_out);
        continue;
      }
      const int64_t s0 = bounds[k], e0 = bounds[k + 1];
      if (e0 <= s0) {
        std::memset(d, 0, sizeof(T) * c_in * c_out);
        continue;
      }
      for (int64_t s = s0; s < e0; s += tile) {
        const int64_t m = std::min(tile, e0 - s);
        for (int64_t p = 0; p < m; ++p) {
          std::memcpy(gx + p * c_in, x + in_idx[s + p] * c_in, sizeof(T) * c_in);
          std::memcpy(gg + p * c_out, g + out_idx[s + p] * c_out, sizeof(T) * c_out);
        }
        gemm('N', 'T', static_cast<int>(c_out), static_cast<int>(c_in), static_cast<int>(m), T(1), gg,
             static_cast<int>(c_out), gx, static_cast<int>(c_in), s == s0 ? T(0) : T(1), d,
             static_cast<int>(c_out));
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

void check_common(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& in_idx,
                  const torch::Tensor& out_idx) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "fused sparse conv runs on CPU tensors");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), "features must be a contiguous (N, C) tensor");
  TORCH_CHECK(w.dim() == 3 && w.is_contiguous() && w.scalar_type() == x.scalar_type(),
              "weight must be a contiguous (K, C_in, C_out) tensor of the features' dtype");
  TORCH_CHECK(in_idx.scalar_type() == torch::kLong && out_idx.scalar_type() == torch::kLong &&
                  in_idx.is_contiguous() && out_idx.is_contiguous() && in_idx.numel() == out_idx.numel(),
              "pair indices must be contiguous int64 tensors of equal length");
}

}  // namespace

// out (n_out, C_out) = bias + x[rows] @ W[identity] + sum_k sum_{pairs of k} x[in] @ op(W[k]) (with scale:
// scale * (that sum) + bias), then optionally + residual (n_out, C_out) and ReLU (an inference
// epilogue: no gradient for these).
// starts: (K, n_blocks + 1) int64, the pairs of offset k whose output row lies in block b are
// [starts[k, b], starts[k, b + 1]); within one (k, b) no output row repeats.
torch::Tensor apply_map(torch::Tensor x, torch::Tensor weight, torch::Tensor in_idx, torch::Tensor out_idx,
                        torch::Tensor starts, int64_t identity, c10::optional<torch::Tensor> scale,
                        c10::optional<torch::Tensor> bias, c10::optional<torch::Tensor> residual, bool relu,
                        bool transpose_weight, int64_t n_out, int64_t block_rows) {
  check_common(x, weight, in_idx, out_idx);
  const int64_t K = weight.size(0);
  const int64_t c_in = transpose_weight ? weight.size(2) : weight.size(1);
  const int64_t c_out = transpose_weight ? weight.size(1) : weight.size(2);
  TORCH_CHECK(x.size(1) == c_in, "features have ", x.size(1), " channels, the weight expects ", c_in);
  TORCH_CHECK(block_rows > 0, "block_rows must be positive");
  const int64_t n_blocks = (n_out + block_rows - 1) / block_rows;
  TORCH_CHECK(starts.scalar_type() == torch::kLong && starts.is_contiguous() && starts.dim() == 2 &&
                  starts.size(0) == K && starts.size(1) == n_blocks + 1,
              "starts must be a contiguous (K, n_blocks + 1) int64 tensor");
  TORCH_CHECK(identity < 0 || x.size(0) == n_out, "an identity offset needs as many input as output rows");
  auto out = torch::empty({n_out, c_out}, x.options());
  if (n_out == 0) return out;
  torch::Tensor b;
  if (bias.has_value() && bias->defined()) {
    b = bias->contiguous();
    TORCH_CHECK(b.numel() == c_out && b.scalar_type() == x.scalar_type(), "bias must be (C_out,) of the features' dtype");
  }
  torch::Tensor sc;
  if (scale.has_value() && scale->defined()) {
    sc = scale->contiguous();
    TORCH_CHECK(sc.numel() == c_out && sc.scalar_type() == x.scalar_type(), "scale must be (C_out,) of the features' dtype");
  }
  torch::Tensor res;
  if (residual.has_value() && residual->defined()) {
    res = residual->contiguous();
    TORCH_CHECK(res.dim() == 2 && res.size(0) == n_out && res.size(1) == c_out && res.scalar_type() == x.scalar_type(),
                "residual must be (n_out, C_out) of the features' dtype");
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lima_fused_apply_map", [&] {
    apply_map_impl<scalar_t>(x.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), in_idx.data_ptr<int64_t>(),
                             out_idx.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), K, identity,
                             sc.defined() ? sc.data_ptr<scalar_t>() : nullptr, b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                             res.defined() ? res.data_ptr<scalar_t>() : nullptr, relu, transpose_weight, c_in, c_out,
                             n_out, block_rows, n_blocks, out.data_ptr<scalar_t>());
  });
  return out;
}

// dW (K, C_in, C_out): dW[k] = x[in_k]^T @ grad[out_k]; the identity offset (if any) is x^T @ grad.
torch::Tensor weight_grad(torch::Tensor x, torch::Tensor grad, torch::Tensor in_idx, torch::Tensor out_idx,
                          std::vector<int64_t> bounds, int64_t identity, int64_t tile) {
  TORCH_CHECK(grad.dim() == 2 && grad.is_contiguous() && grad.scalar_type() == x.scalar_type(),
              "grad must be a contiguous (N_out, C_out) tensor");
  auto w_shape = torch::empty({1, x.size(1), grad.size(1)}, x.options());
  check_common(x, w_shape, in_idx, out_idx);
  const int64_t K = static_cast<int64_t>(bounds.size()) - 1;
  TORCH_CHECK(K > 0 && bounds.back() == in_idx.numel(), "bounds must end at the number of pairs");
  TORCH_CHECK(identity < 0 || x.size(0) == grad.size(0), "an identity offset needs as many input as output rows");
  TORCH_CHECK(tile > 0, "tile must be positive");
  auto dw = torch::empty({K, x.size(1), grad.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "lima_fused_weight_grad", [&] {
    weight_grad_impl<scalar_t>(x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), in_idx.data_ptr<int64_t>(),
                               out_idx.data_ptr<int64_t>(), bounds.data(), K, identity, x.size(0), x.size(1),
                               grad.size(1), tile, dw.data_ptr<scalar_t>());
  });
  return dw;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("apply_map", &apply_map, "fused gather-GEMM-scatter over a kernel map (forward and grad input)");
  m.def("weight_grad", &weight_grad, "grad of the kernel weights over a kernel map");
}
