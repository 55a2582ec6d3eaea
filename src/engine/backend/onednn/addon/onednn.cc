// oneDNN kernels for tfjs-backend-wasm's tensors (see ../kernels.ts).
//
// Every function takes the wasm heap (the ArrayBuffer of tfjs-backend-wasm's WebAssembly.Memory),
// the byte offsets of its tensors in it and their geometry, computes every tensor's size from that
// geometry itself and checks it against the heap before oneDNN touches memory: a wrong offset or size
// throws a JavaScript RangeError, never reads or writes outside the buffer. The tensors are used where
// they lie (no copies); only weights are reordered into the layout the chosen oneDNN implementation
// wants. Primitives are created once per geometry and cached (creating one JIT-compiles code).
//
// Layouts: activations NHWC, filters HWIO (tfjs's Conv2D), HWIGO with I = 1 (tfjs's depthwise
// [kh, kw, channels, multiplier]) or HWIGO for grouped convolutions ([kh, kw, I / groups, O] with the
// output channels group-major), matrices row-major with optional transposes.

#include <napi.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <oneapi/dnnl/dnnl.hpp>
#include <sstream>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using dnnl::memory;
using Dims = memory::dims;
using Tag = memory::format_tag;
using DataType = memory::data_type;

/** Largest accepted dimension: far above any real tensor, small enough that products of a few stay
 * well inside int64 before the overflow-checked multiplication below is even needed. */
constexpr int64_t kMaxDim = int64_t{1} << 30;

dnnl::engine& cpuEngine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& cpuStream() {
  static dnnl::stream stream(cpuEngine());
  return stream;
}

/** Threads set by setThreads (RATIO_THREADS); small primitives run on one (see threadsFor). */
int configuredThreads = omp_get_max_threads();

/**
 * Below this many multiply-adds a primitive runs on one thread: waking the OpenMP team costs more
 * than it saves (a dense layer's 64x128x10 product), and on a busy machine a descheduled team member
 * stalls the whole call at the barrier.
 */
constexpr int64_t kParallelWork = int64_t{1} << 22;

int threadsFor(int64_t work) { return work < kParallelWork ? 1 : configuredThreads; }

/**
 * Serialises every call: the primitive caches and the stream are shared by the whole process, and a
 * process may load the addon in several worker threads (each with its own tfjs). Each call already
 * uses every configured core, so waiting costs no throughput.
 */
std::mutex callMutex;

/** Holds the call lock and runs the enclosed primitive creation or execution on `threads` threads. */
class ThreadScope {
 public:
  explicit ThreadScope(int threads) : lock_(callMutex) {
    // The thread count is an OpenMP per-thread setting: set it on whichever thread calls.
    omp_set_num_threads(threads);
  }

 private:
  std::lock_guard<std::mutex> lock_;
};

struct Heap {
  uint8_t* base;
  size_t length;
};

Heap heapArg(const Napi::CallbackInfo& info, size_t index) {
  if (index >= info.Length() || !info[index].IsArrayBuffer()) {
    throw Napi::TypeError::New(info.Env(), "argument 'heap' must be an ArrayBuffer (the wasm memory)");
  }
  auto buffer = info[index].As<Napi::ArrayBuffer>();
  return {static_cast<uint8_t*>(buffer.Data()), buffer.ByteLength()};
}

int64_t integerValue(Napi::Env env, const Napi::Value& value, const std::string& name, int64_t min,
                     int64_t max) {
  if (!value.IsNumber()) throw Napi::TypeError::New(env, "'" + name + "' must be a number");
  const double number = value.As<Napi::Number>().DoubleValue();
  if (!(number >= static_cast<double>(min) && number <= static_cast<double>(max)) ||
      number != static_cast<double>(static_cast<int64_t>(number))) {
    std::ostringstream message;
    message << "'" << name << "' must be an integer in [" << min << ", " << max << "], got " << number;
    throw Napi::RangeError::New(env, message.str());
  }
  return static_cast<int64_t>(number);
}

int64_t integerArg(const Napi::CallbackInfo& info, size_t index, const std::string& name, int64_t min,
                   int64_t max) {
  if (index >= info.Length()) throw Napi::TypeError::New(info.Env(), "missing argument '" + name + "'");
  return integerValue(info.Env(), info[index], name, min, max);
}

/** An array of integers (the geometry), each in [min, kMaxDim]. */
std::vector<int64_t> integersArg(const Napi::CallbackInfo& info, size_t index, const std::string& name,
                                 size_t count, int64_t min) {
  if (index >= info.Length() || !info[index].IsArray()) {
    throw Napi::TypeError::New(info.Env(), "'" + name + "' must be an array of integers");
  }
  auto array = info[index].As<Napi::Array>();
  if (array.Length() != count) {
    throw Napi::RangeError::New(info.Env(),
                                "'" + name + "' must have " + std::to_string(count) + " entries");
  }
  std::vector<int64_t> values(count);
  for (uint32_t i = 0; i < count; i++) {
    values[i] = integerValue(info.Env(), array.Get(i), name + "[" + std::to_string(i) + "]", min, kMaxDim);
  }
  return values;
}

int64_t product(Napi::Env env, std::initializer_list<int64_t> factors) {
  int64_t result = 1;
  for (int64_t factor : factors) {
    if (__builtin_mul_overflow(result, factor, &result)) {
      throw Napi::RangeError::New(env, "tensor size overflows");
    }
  }
  return result;
}

/**
 * The float32 tensor of `count` values at byte `offset` of the heap, after checking that it lies
 * entirely inside the heap and is aligned.
 */
float* tensorAt(Napi::Env env, const Heap& heap, int64_t offset, int64_t count, const char* name) {
  const uint64_t length = heap.length;
  if (offset < 0 || offset % 4 != 0) {
    throw Napi::RangeError::New(env, std::string("offset of '") + name + "' must be a non-negative multiple of 4");
  }
  int64_t bytes = 0;
  if (count < 1 || __builtin_mul_overflow(count, int64_t{4}, &bytes) ||
      static_cast<uint64_t>(offset) > length || static_cast<uint64_t>(bytes) > length - static_cast<uint64_t>(offset)) {
    std::ostringstream message;
    message << "'" << name << "' (" << count << " float32 at byte " << offset
            << ") does not lie inside the wasm heap (" << length << " bytes)";
    throw Napi::RangeError::New(env, message.str());
  }
  return reinterpret_cast<float*>(heap.base + offset);
}

/** Post-op codes shared with kernels.ts (ACTIVATION_CODES). */
enum Activation { kLinear = 0, kRelu = 1, kRelu6 = 2, kLeakyRelu = 3, kElu = 4, kSigmoid = 5 };

dnnl::primitive_attr activationAttr(int64_t activation, float alpha) {
  dnnl::primitive_attr attr;
  dnnl::post_ops ops;
  switch (activation) {
    case kLinear:
      break;
    case kRelu:
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
      break;
    case kRelu6:
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_clip, 0.f, 6.f);
      break;
    case kLeakyRelu:
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, alpha, 0.f);
      break;
    case kElu:
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_elu, 1.f, 0.f);
      break;
    case kSigmoid:
      ops.append_eltwise(1.f, dnnl::algorithm::eltwise_logistic, 0.f, 0.f);
      break;
  }
  attr.set_post_ops(ops);
  return attr;
}

// ---------------------------------------------------------------------------------------------------
// Convolutions

/** The geometry array shared with kernels.ts (convGeometry), in this order. */
struct ConvGeometry {
  int64_t batch, inHeight, inWidth, inChannels;
  int64_t outHeight, outWidth, outChannels;
  int64_t kernelHeight, kernelWidth, strideHeight, strideWidth, dilationHeight, dilationWidth;
  int64_t padTop, padLeft, padBottom, padRight;
  int64_t groups;

  static constexpr size_t kCount = 18;

  std::string key() const {
    std::ostringstream out;
    out << batch << ',' << inHeight << ',' << inWidth << ',' << inChannels << ',' << outHeight << ','
        << outWidth << ',' << outChannels << ',' << kernelHeight << ',' << kernelWidth << ',' << strideHeight
        << ',' << strideWidth << ',' << dilationHeight << ',' << dilationWidth << ',' << padTop << ','
        << padLeft << ',' << padBottom << ',' << padRight << ',' << groups;
    return out.str();
  }

  int64_t srcCount(Napi::Env env) const { return product(env, {batch, inHeight, inWidth, inChannels}); }
  int64_t dstCount(Napi::Env env) const { return product(env, {batch, outHeight, outWidth, outChannels}); }
  /** Multiply-adds of one pass (the same for forward and both backward passes). */
  int64_t work(Napi::Env env) const {
    return product(env, {batch, outHeight, outWidth, outChannels, kernelHeight, kernelWidth, inChannels / groups});
  }
  int64_t weightsCount(Napi::Env env) const {
    return product(env, {kernelHeight, kernelWidth, inChannels / groups, outChannels});
  }

  memory::desc srcDesc() const {
    return memory::desc({batch, inChannels, inHeight, inWidth}, DataType::f32, Tag::nhwc);
  }
  memory::desc dstDesc() const {
    return memory::desc({batch, outChannels, outHeight, outWidth}, DataType::f32, Tag::nhwc);
  }
  Dims weightsDims() const {
    if (groups == 1) return {outChannels, inChannels, kernelHeight, kernelWidth};
    return {groups, outChannels / groups, inChannels / groups, kernelHeight, kernelWidth};
  }
  memory::desc userWeightsDesc() const {
    return memory::desc(weightsDims(), DataType::f32, groups == 1 ? Tag::hwio : Tag::hwigo);
  }
  memory::desc anyWeightsDesc() const { return memory::desc(weightsDims(), DataType::f32, Tag::any); }
  Dims strides() const { return {strideHeight, strideWidth}; }
  Dims dilates() const { return {dilationHeight - 1, dilationWidth - 1}; }
  Dims padLeftDims() const { return {padTop, padLeft}; }
  /**
   * The right pads that make the output size exact, as oneDNN's kernels assume (PyTorch passes them
   * so too): negative where the last input rows are never read, e.g. a 1x1 stride-2 convolution of an
   * even size. tfjs's pads may exceed them by up to stride - 1, and with those the 1x1 strided weight
   * gradient wrote past its buffers.
   */
  Dims padRightDims() const {
    return {(outHeight - 1) * strideHeight + (kernelHeight - 1) * dilationHeight + 1 - inHeight - padTop,
            (outWidth - 1) * strideWidth + (kernelWidth - 1) * dilationWidth + 1 - inWidth - padLeft};
  }
};

ConvGeometry convGeometryArg(const Napi::CallbackInfo& info, size_t index) {
  const Napi::Env env = info.Env();
  auto v = integersArg(info, index, "geometry", ConvGeometry::kCount, 0);
  ConvGeometry g{v[0], v[1], v[2],  v[3],  v[4],  v[5],  v[6],  v[7],  v[8],
                 v[9], v[10], v[11], v[12], v[13], v[14], v[15], v[16], v[17]};
  for (size_t i : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 17}) {
    if (v[i] < 1) throw Napi::RangeError::New(env, "geometry[" + std::to_string(i) + "] must be >= 1");
  }
  if (g.inChannels % g.groups != 0 || g.outChannels % g.groups != 0) {
    throw Napi::RangeError::New(env, "groups must divide the input and the output channels");
  }
  // The output size must be exactly what the padded input, filter, dilation and stride give.
  const int64_t spanHeight = (g.kernelHeight - 1) * g.dilationHeight + 1;
  const int64_t spanWidth = (g.kernelWidth - 1) * g.dilationWidth + 1;
  const int64_t paddedHeight = g.inHeight + g.padTop + g.padBottom;
  const int64_t paddedWidth = g.inWidth + g.padLeft + g.padRight;
  if (paddedHeight < spanHeight || paddedWidth < spanWidth ||
      (paddedHeight - spanHeight) / g.strideHeight + 1 != g.outHeight ||
      (paddedWidth - spanWidth) / g.strideWidth + 1 != g.outWidth) {
    throw Napi::RangeError::New(env, "output size does not match input, filter, strides, dilations and pads");
  }
  return g;
}

/** A reorder between two layouts of the same tensor, or none when they are equal. */
struct WeightsReorder {
  memory::desc user;
  memory::desc internal;
  std::unique_ptr<dnnl::reorder> reorder;
  std::unique_ptr<memory> buffer;  // the weights in `internal`'s layout, reused across calls

  WeightsReorder(const memory::desc& userDesc, const memory::desc& internalDesc, bool toUser)
      : user(userDesc), internal(internalDesc) {
    if (user != internal) {
      buffer = std::make_unique<memory>(internal, cpuEngine());
      const memory::desc& from = toUser ? internal : user;
      const memory::desc& to = toUser ? user : internal;
      reorder = std::make_unique<dnnl::reorder>(dnnl::reorder::primitive_desc(cpuEngine(), from, cpuEngine(), to));
    }
  }

  /** Copies user weights in (toUser false): returns the memory the primitive reads. */
  memory in(float* data) {
    memory userMemory(user, cpuEngine(), data);
    if (!reorder) return userMemory;
    reorder->execute(cpuStream(), userMemory, *buffer);
    return *buffer;
  }
  /** The memory the primitive writes; `out` copies it to the user's layout afterwards. */
  memory target(float* data) { return reorder ? *buffer : memory(user, cpuEngine(), data); }
  void out(float* data) {
    if (!reorder) return;
    memory userMemory(user, cpuEngine(), data);
    reorder->execute(cpuStream(), *buffer, userMemory);
  }
};

struct ForwardEntry {
  int threads;
  dnnl::convolution_forward primitive;
  WeightsReorder weights;
  std::string implementation;
};

struct BackwardDataEntry {
  int threads;
  dnnl::convolution_backward_data primitive;
  WeightsReorder weights;
  std::string implementation;
};

struct BackwardWeightsEntry {
  int threads;
  dnnl::convolution_backward_weights primitive;
  WeightsReorder weights;
  std::string implementation;
};

std::unordered_map<std::string, std::unique_ptr<ForwardEntry>> forwardCache;
std::unordered_map<std::string, std::unique_ptr<BackwardDataEntry>> backwardDataCache;
std::unordered_map<std::string, std::unique_ptr<BackwardWeightsEntry>> backwardWeightsCache;

dnnl::convolution_forward::primitive_desc forwardDesc(const ConvGeometry& g, bool bias, dnnl::prop_kind kind,
                                                      const dnnl::primitive_attr& attr) {
  const memory::desc biasDesc =
      bias ? memory::desc({g.outChannels}, DataType::f32, Tag::a) : memory::desc();
  dnnl::convolution_forward::desc desc(kind, dnnl::algorithm::convolution_direct, g.srcDesc(),
                                       g.anyWeightsDesc(), biasDesc, g.dstDesc(), g.strides(), g.dilates(),
                                       g.padLeftDims(), g.padRightDims());
  return dnnl::convolution_forward::primitive_desc(desc, attr, cpuEngine());
}

void wrapDnnlErrors(Napi::Env env, const std::function<void()>& body) {
  try {
    body();
  } catch (const dnnl::error& error) {
    throw Napi::Error::New(env, std::string("oneDNN: ") + error.what());
  }
}

/** convForward(heap, geometry, src, weights, bias (-1: none), dst, activation, alpha) */
Napi::Value ConvForward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const ConvGeometry g = convGeometryArg(info, 1);
  const int64_t srcOffset = integerArg(info, 2, "src", 0, INT64_MAX / 2);
  const int64_t weightsOffset = integerArg(info, 3, "weights", 0, INT64_MAX / 2);
  const int64_t biasOffset = integerArg(info, 4, "bias", -1, INT64_MAX / 2);
  const int64_t dstOffset = integerArg(info, 5, "dst", 0, INT64_MAX / 2);
  const int64_t activation = integerArg(info, 6, "activation", kLinear, kSigmoid);
  if (info.Length() < 8 || !info[7].IsNumber()) throw Napi::TypeError::New(env, "'alpha' must be a number");
  const float alpha = info[7].As<Napi::Number>().FloatValue();

  float* src = tensorAt(env, heap, srcOffset, g.srcCount(env), "src");
  float* weights = tensorAt(env, heap, weightsOffset, g.weightsCount(env), "weights");
  float* bias = biasOffset >= 0 ? tensorAt(env, heap, biasOffset, g.outChannels, "bias") : nullptr;
  float* dst = tensorAt(env, heap, dstOffset, g.dstCount(env), "dst");

  wrapDnnlErrors(env, [&] {
    std::ostringstream key;
    key << g.key() << '|' << (bias ? 1 : 0) << '|' << activation << '|' << alpha;
    const int threads = threadsFor(g.work(env));
    ThreadScope scope(threads);
    auto& entry = forwardCache[key.str()];
    if (!entry) {
      auto pd = forwardDesc(g, bias != nullptr, dnnl::prop_kind::forward_inference,
                            activationAttr(activation, alpha));
      entry.reset(new ForwardEntry{threads, dnnl::convolution_forward(pd),
                                   WeightsReorder(g.userWeightsDesc(), pd.weights_desc(), false),
                                   pd.impl_info_str()});
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.srcDesc(), cpuEngine(), src)},
        {DNNL_ARG_WEIGHTS, entry->weights.in(weights)},
        {DNNL_ARG_DST, memory(g.dstDesc(), cpuEngine(), dst)},
    };
    if (bias) args.emplace(DNNL_ARG_BIAS, memory({{g.outChannels}, DataType::f32, Tag::a}, cpuEngine(), bias));
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}

/** convBackwardData(heap, geometry, diffDst, weights, diffSrc): dL/dx. */
Napi::Value ConvBackwardData(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const ConvGeometry g = convGeometryArg(info, 1);
  float* diffDst = tensorAt(env, heap, integerArg(info, 2, "diffDst", 0, INT64_MAX / 2), g.dstCount(env), "diffDst");
  float* weights =
      tensorAt(env, heap, integerArg(info, 3, "weights", 0, INT64_MAX / 2), g.weightsCount(env), "weights");
  float* diffSrc = tensorAt(env, heap, integerArg(info, 4, "diffSrc", 0, INT64_MAX / 2), g.srcCount(env), "diffSrc");

  wrapDnnlErrors(env, [&] {
    ThreadScope scope(threadsFor(g.work(env)));
    auto& entry = backwardDataCache[g.key()];
    if (!entry) {
      auto hint = forwardDesc(g, false, dnnl::prop_kind::forward_training, dnnl::primitive_attr());
      dnnl::convolution_backward_data::desc desc(dnnl::algorithm::convolution_direct, g.srcDesc(),
                                                 g.anyWeightsDesc(), g.dstDesc(), g.strides(), g.dilates(),
                                                 g.padLeftDims(), g.padRightDims());
      dnnl::convolution_backward_data::primitive_desc pd(desc, cpuEngine(), hint);
      entry.reset(new BackwardDataEntry{threadsFor(g.work(env)), dnnl::convolution_backward_data(pd),
                                        WeightsReorder(g.userWeightsDesc(), pd.weights_desc(), false),
                                        pd.impl_info_str()});
    }
    entry->primitive.execute(cpuStream(), {
                                              {DNNL_ARG_DIFF_DST, memory(g.dstDesc(), cpuEngine(), diffDst)},
                                              {DNNL_ARG_WEIGHTS, entry->weights.in(weights)},
                                              {DNNL_ARG_DIFF_SRC, memory(g.srcDesc(), cpuEngine(), diffSrc)},
                                          });
    cpuStream().wait();
  });
  return env.Undefined();
}

/** convBackwardWeights(heap, geometry, src, diffDst, diffWeights): dL/dfilter. */
Napi::Value ConvBackwardWeights(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const ConvGeometry g = convGeometryArg(info, 1);
  float* src = tensorAt(env, heap, integerArg(info, 2, "src", 0, INT64_MAX / 2), g.srcCount(env), "src");
  float* diffDst = tensorAt(env, heap, integerArg(info, 3, "diffDst", 0, INT64_MAX / 2), g.dstCount(env), "diffDst");
  float* diffWeights =
      tensorAt(env, heap, integerArg(info, 4, "diffWeights", 0, INT64_MAX / 2), g.weightsCount(env), "diffWeights");

  wrapDnnlErrors(env, [&] {
    ThreadScope scope(threadsFor(g.work(env)));
    auto& entry = backwardWeightsCache[g.key()];
    if (!entry) {
      auto hint = forwardDesc(g, false, dnnl::prop_kind::forward_training, dnnl::primitive_attr());
      dnnl::convolution_backward_weights::desc desc(dnnl::algorithm::convolution_direct, g.srcDesc(),
                                                    g.anyWeightsDesc(), g.dstDesc(), g.strides(), g.dilates(),
                                                    g.padLeftDims(), g.padRightDims());
      dnnl::convolution_backward_weights::primitive_desc pd(desc, cpuEngine(), hint);
      // libdnnl 2.6's 1x1 weight-gradient kernel writes out of bounds on some strided 1x1
      // convolutions (a segfault at 56x56x8, stride 2): every strided 1x1 convolution takes the next
      // implementation, the general direct kernel.
      const bool stridedUnitKernel =
          g.kernelHeight == 1 && g.kernelWidth == 1 && (g.strideHeight > 1 || g.strideWidth > 1);
      while (stridedUnitKernel && std::string(pd.impl_info_str()).find("1x1") != std::string::npos && pd.next_impl()) {
      }
      entry.reset(new BackwardWeightsEntry{threadsFor(g.work(env)), dnnl::convolution_backward_weights(pd),
                                           WeightsReorder(g.userWeightsDesc(), pd.diff_weights_desc(), true),
                                           pd.impl_info_str()});
    }
    entry->primitive.execute(cpuStream(), {
                                              {DNNL_ARG_SRC, memory(g.srcDesc(), cpuEngine(), src)},
                                              {DNNL_ARG_DIFF_DST, memory(g.dstDesc(), cpuEngine(), diffDst)},
                                              {DNNL_ARG_DIFF_WEIGHTS, entry->weights.target(diffWeights)},
                                          });
    entry->weights.out(diffWeights);
    cpuStream().wait();
  });
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------------
// Matrix products

/** [batchA, batchB, m, k, n, transposeA, transposeB], shared with kernels.ts (matMulGeometry). */
struct MatMulGeometry {
  int64_t batchA, batchB, m, k, n, transposeA, transposeB;
  static constexpr size_t kCount = 7;

  int64_t batch() const { return batchA > batchB ? batchA : batchB; }
  std::string key() const {
    std::ostringstream out;
    out << batchA << ',' << batchB << ',' << m << ',' << k << ',' << n << ',' << transposeA << ','
        << transposeB;
    return out.str();
  }
  memory::desc aDesc() const {
    // a is [batchA, m, k], or [batchA, k, m] read transposed.
    return memory::desc({batchA, m, k}, DataType::f32,
                        transposeA ? Dims{m * k, 1, m} : Dims{m * k, k, 1});
  }
  memory::desc bDesc() const {
    return memory::desc({batchB, k, n}, DataType::f32,
                        transposeB ? Dims{k * n, 1, k} : Dims{k * n, n, 1});
  }
  memory::desc cDesc() const { return memory::desc({batch(), m, n}, DataType::f32, Dims{m * n, n, 1}); }
  memory::desc biasDesc() const { return memory::desc({1, 1, n}, DataType::f32, Dims{n, n, 1}); }
};

struct MatMulEntry {
  int threads;
  dnnl::matmul primitive;
  std::string implementation;
};

std::unordered_map<std::string, std::unique_ptr<MatMulEntry>> matMulCache;

/** matMul(heap, geometry, a, b, bias (-1: none), c, activation, alpha) */
Napi::Value MatMul(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  auto v = integersArg(info, 1, "geometry", MatMulGeometry::kCount, 0);
  const MatMulGeometry g{v[0], v[1], v[2], v[3], v[4], v[5], v[6]};
  for (size_t i = 0; i < 5; i++) {
    if (v[i] < 1) throw Napi::RangeError::New(env, "geometry[" + std::to_string(i) + "] must be >= 1");
  }
  if (g.transposeA > 1 || g.transposeB > 1) throw Napi::RangeError::New(env, "transposes must be 0 or 1");
  if (g.batchA != g.batchB && g.batchA != 1 && g.batchB != 1) {
    throw Napi::RangeError::New(env, "batch sizes must be equal or one of them 1");
  }
  const int64_t aOffset = integerArg(info, 2, "a", 0, INT64_MAX / 2);
  const int64_t bOffset = integerArg(info, 3, "b", 0, INT64_MAX / 2);
  const int64_t biasOffset = integerArg(info, 4, "bias", -1, INT64_MAX / 2);
  const int64_t cOffset = integerArg(info, 5, "c", 0, INT64_MAX / 2);
  const int64_t activation = integerArg(info, 6, "activation", kLinear, kSigmoid);
  if (info.Length() < 8 || !info[7].IsNumber()) throw Napi::TypeError::New(env, "'alpha' must be a number");
  const float alpha = info[7].As<Napi::Number>().FloatValue();

  float* a = tensorAt(env, heap, aOffset, product(env, {g.batchA, g.m, g.k}), "a");
  float* b = tensorAt(env, heap, bOffset, product(env, {g.batchB, g.k, g.n}), "b");
  float* bias = biasOffset >= 0 ? tensorAt(env, heap, biasOffset, g.n, "bias") : nullptr;
  float* c = tensorAt(env, heap, cOffset, product(env, {g.batch(), g.m, g.n}), "c");

  wrapDnnlErrors(env, [&] {
    std::ostringstream key;
    key << g.key() << '|' << (bias ? 1 : 0) << '|' << activation << '|' << alpha;
    const int threads = threadsFor(product(env, {g.batch(), g.m, g.n, g.k}));
    ThreadScope scope(threads);
    auto& entry = matMulCache[key.str()];
    if (!entry) {
      dnnl::matmul::desc desc = bias ? dnnl::matmul::desc(g.aDesc(), g.bDesc(), g.biasDesc(), g.cDesc())
                                     : dnnl::matmul::desc(g.aDesc(), g.bDesc(), g.cDesc());
      dnnl::matmul::primitive_desc pd(desc, activationAttr(activation, alpha), cpuEngine());
      entry.reset(new MatMulEntry{threads, dnnl::matmul(pd), pd.impl_info_str()});
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.aDesc(), cpuEngine(), a)},
        {DNNL_ARG_WEIGHTS, memory(g.bDesc(), cpuEngine(), b)},
        {DNNL_ARG_DST, memory(g.cDesc(), cpuEngine(), c)},
    };
    if (bias) args.emplace(DNNL_ARG_BIAS, memory(g.biasDesc(), cpuEngine(), bias));
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}

// ---------------------------------------------------------------------------------------------------
// Batch normalisation and elementwise ops: memory-bound, so the win is one multi-threaded pass instead
// of the dozens of single-threaded tfjs ops they are made of on wasm.

/** Below this many values an elementwise primitive runs on one thread (see kParallelWork). */
constexpr int64_t kParallelValues = int64_t{1} << 16;

int threadsForValues(int64_t values) { return values < kParallelValues ? 1 : configuredThreads; }

/** [batch, height, width, channels] of an NHWC tensor normalised per channel (rank 2: height = width = 1). */
struct NormGeometry {
  int64_t batch, height, width, channels;
  static constexpr size_t kCount = 4;

  std::string key() const {
    std::ostringstream out;
    out << batch << ',' << height << ',' << width << ',' << channels;
    return out.str();
  }
  int64_t count(Napi::Env env) const { return product(env, {batch, height, width, channels}); }
  memory::desc dataDesc() const {
    return memory::desc({batch, channels, height, width}, DataType::f32, Tag::nhwc);
  }
  memory::desc channelDesc() const { return memory::desc({channels}, DataType::f32, Tag::a); }
};

NormGeometry normGeometryArg(const Napi::CallbackInfo& info, size_t index) {
  auto v = integersArg(info, index, "geometry", NormGeometry::kCount, 1);
  return {v[0], v[1], v[2], v[3]};
}

float floatArg(const Napi::CallbackInfo& info, size_t index, const std::string& name) {
  if (index >= info.Length() || !info[index].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), "'" + name + "' must be a number");
  }
  const double value = info[index].As<Napi::Number>().DoubleValue();
  if (!std::isfinite(value)) throw Napi::RangeError::New(info.Env(), "'" + name + "' must be finite");
  return static_cast<float>(value);
}

/** A per-channel tensor at the offset in argument `index`, or nullptr for -1 (absent). */
float* optionalChannels(const Napi::CallbackInfo& info, const Heap& heap, size_t index, const char* name,
                        int64_t channels) {
  const int64_t offset = integerArg(info, index, name, -1, INT64_MAX / 2);
  return offset < 0 ? nullptr : tensorAt(info.Env(), heap, offset, channels, name);
}

dnnl::normalization_flags normFlags(bool globalStats, bool scale, bool shift) {
  auto flags = dnnl::normalization_flags::none;
  if (globalStats) flags = flags | dnnl::normalization_flags::use_global_stats;
  if (scale) flags = flags | dnnl::normalization_flags::use_scale;
  if (shift) flags = flags | dnnl::normalization_flags::use_shift;
  return flags;
}

struct NormForwardEntry {
  int threads;
  dnnl::batch_normalization_forward primitive;
  std::string implementation;
};

struct NormBackwardEntry {
  int threads;
  dnnl::batch_normalization_backward primitive;
  std::string implementation;
};

std::unordered_map<std::string, std::unique_ptr<NormForwardEntry>> normForwardCache;
std::unordered_map<std::string, std::unique_ptr<NormBackwardEntry>> normBackwardCache;

dnnl::batch_normalization_forward::primitive_desc normForwardDesc(const NormGeometry& g, float epsilon,
                                                                  bool training,
                                                                  dnnl::normalization_flags flags) {
  dnnl::batch_normalization_forward::desc desc(
      training ? dnnl::prop_kind::forward_training : dnnl::prop_kind::forward_inference, g.dataDesc(), epsilon,
      flags);
  return dnnl::batch_normalization_forward::primitive_desc(desc, cpuEngine());
}

/**
 * batchNormForward(heap, geometry, src, mean, variance, scale (-1: none), shift (-1: none), dst, epsilon,
 * training): training 1 computes the batch mean and biased variance into `mean` and `variance`; 0 reads
 * them (running statistics).
 */
Napi::Value BatchNormForward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const NormGeometry g = normGeometryArg(info, 1);
  const int64_t count = g.count(env);
  float* src = tensorAt(env, heap, integerArg(info, 2, "src", 0, INT64_MAX / 2), count, "src");
  float* mean = tensorAt(env, heap, integerArg(info, 3, "mean", 0, INT64_MAX / 2), g.channels, "mean");
  float* variance =
      tensorAt(env, heap, integerArg(info, 4, "variance", 0, INT64_MAX / 2), g.channels, "variance");
  float* scale = optionalChannels(info, heap, 5, "scale", g.channels);
  float* shift = optionalChannels(info, heap, 6, "shift", g.channels);
  float* dst = tensorAt(env, heap, integerArg(info, 7, "dst", 0, INT64_MAX / 2), count, "dst");
  const float epsilon = floatArg(info, 8, "epsilon");
  const bool training = integerArg(info, 9, "training", 0, 1) == 1;
  if (!(epsilon >= 0)) throw Napi::RangeError::New(env, "'epsilon' must be >= 0");

  wrapDnnlErrors(env, [&] {
    const auto flags = normFlags(!training, scale != nullptr, shift != nullptr);
    std::ostringstream key;
    key << g.key() << '|' << training << '|' << static_cast<unsigned>(flags) << '|' << epsilon;
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = normForwardCache[key.str()];
    if (!entry) {
      auto pd = normForwardDesc(g, epsilon, training, flags);
      entry.reset(new NormForwardEntry{threads, dnnl::batch_normalization_forward(pd), pd.impl_info_str()});
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.dataDesc(), cpuEngine(), src)},
        {DNNL_ARG_DST, memory(g.dataDesc(), cpuEngine(), dst)},
        {DNNL_ARG_MEAN, memory(g.channelDesc(), cpuEngine(), mean)},
        {DNNL_ARG_VARIANCE, memory(g.channelDesc(), cpuEngine(), variance)},
    };
    if (scale) args.emplace(DNNL_ARG_SCALE, memory(g.channelDesc(), cpuEngine(), scale));
    if (shift) args.emplace(DNNL_ARG_SHIFT, memory(g.channelDesc(), cpuEngine(), shift));
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}

/**
 * dx = dy * scale / sqrt(variance + epsilon) per channel: the input gradient with constant statistics
 * (inference mode). oneDNN's backward_data does not take a scale, and its full backward would read the
 * input once more for a scale gradient nobody asked for.
 */
void scaleByChannel(const NormGeometry& g, int64_t rows, const float* diffDst, const float* variance,
                    const float* scale, float epsilon, float* diffSrc, int threads) {
  const int64_t channels = g.channels;
  std::vector<float> factor(channels);
  for (int64_t c = 0; c < channels; c++) {
    factor[c] = (scale ? scale[c] : 1.f) / std::sqrt(variance[c] + epsilon);
  }
  const float* k = factor.data();
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < rows; row++) {
    const float* in = diffDst + row * channels;
    float* out = diffSrc + row * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; c++) out[c] = in[c] * k[c];
  }
}

/**
 * batchNormBackward(heap, geometry, src, diffDst, mean, variance, scale (-1: none), diffSrc,
 * diffScale (-1: not wanted), diffShift (-1: not wanted), epsilon, training): training 1 differentiates
 * through the batch statistics (the forward of training 1) and needs scale, diffScale and diffShift;
 * 0 treats mean and variance as constants and gives diffSrc only.
 */
Napi::Value BatchNormBackward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const NormGeometry g = normGeometryArg(info, 1);
  const int64_t count = g.count(env);
  float* src = tensorAt(env, heap, integerArg(info, 2, "src", 0, INT64_MAX / 2), count, "src");
  float* diffDst = tensorAt(env, heap, integerArg(info, 3, "diffDst", 0, INT64_MAX / 2), count, "diffDst");
  float* mean = tensorAt(env, heap, integerArg(info, 4, "mean", 0, INT64_MAX / 2), g.channels, "mean");
  float* variance =
      tensorAt(env, heap, integerArg(info, 5, "variance", 0, INT64_MAX / 2), g.channels, "variance");
  float* scale = optionalChannels(info, heap, 6, "scale", g.channels);
  float* diffSrc = tensorAt(env, heap, integerArg(info, 7, "diffSrc", 0, INT64_MAX / 2), count, "diffSrc");
  float* diffScale = optionalChannels(info, heap, 8, "diffScale", g.channels);
  float* diffShift = optionalChannels(info, heap, 9, "diffShift", g.channels);
  const float epsilon = floatArg(info, 10, "epsilon");
  const bool training = integerArg(info, 11, "training", 0, 1) == 1;
  if (!(epsilon >= 0)) throw Napi::RangeError::New(env, "'epsilon' must be >= 0");
  const bool parameters = diffScale != nullptr || diffShift != nullptr;
  if (training && (diffScale == nullptr || diffShift == nullptr || scale == nullptr)) {
    throw Napi::RangeError::New(env, "training 1 needs 'scale', 'diffScale' and 'diffShift'");
  }
  if (!training && parameters) {
    throw Napi::RangeError::New(env, "'diffScale' and 'diffShift' need training 1");
  }

  if (!training) {
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    scaleByChannel(g, count / g.channels, diffDst, variance, scale, epsilon, diffSrc, threads);
    return env.Undefined();
  }
  wrapDnnlErrors(env, [&] {
    const auto flags = normFlags(false, true, true);
    std::ostringstream key;
    key << g.key() << '|' << epsilon;
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = normBackwardCache[key.str()];
    if (!entry) {
      auto hint = normForwardDesc(g, epsilon, true, flags);
      dnnl::batch_normalization_backward::desc desc(dnnl::prop_kind::backward, g.dataDesc(), g.dataDesc(),
                                                    epsilon, flags);
      dnnl::batch_normalization_backward::primitive_desc pd(desc, cpuEngine(), hint);
      entry.reset(new NormBackwardEntry{threads, dnnl::batch_normalization_backward(pd), pd.impl_info_str()});
    }
    entry->primitive.execute(cpuStream(), {
                                              {DNNL_ARG_SRC, memory(g.dataDesc(), cpuEngine(), src)},
                                              {DNNL_ARG_DIFF_DST, memory(g.dataDesc(), cpuEngine(), diffDst)},
                                              {DNNL_ARG_MEAN, memory(g.channelDesc(), cpuEngine(), mean)},
                                              {DNNL_ARG_VARIANCE, memory(g.channelDesc(), cpuEngine(), variance)},
                                              {DNNL_ARG_SCALE, memory(g.channelDesc(), cpuEngine(), scale)},
                                              // Required with use_shift, never read by the gradients.
                                              {DNNL_ARG_SHIFT, memory(g.channelDesc(), cpuEngine(), scale)},
                                              {DNNL_ARG_DIFF_SRC, memory(g.dataDesc(), cpuEngine(), diffSrc)},
                                              {DNNL_ARG_DIFF_SCALE, memory(g.channelDesc(), cpuEngine(), diffScale)},
                                              {DNNL_ARG_DIFF_SHIFT, memory(g.channelDesc(), cpuEngine(), diffShift)},
                                          });
    cpuStream().wait();
  });
  return env.Undefined();
}

struct EltwiseEntry {
  int threads;
  dnnl::primitive primitive;
  std::string implementation;
};

std::unordered_map<std::string, std::unique_ptr<EltwiseEntry>> eltwiseCache;

memory::desc flatDesc(int64_t count) { return memory::desc({count}, DataType::f32, Tag::a); }

/** Elementwise op codes shared with kernels.ts (ELEMENTWISE_CODES). */
enum Elementwise { kReluForward = 0, kReluBackward = 1, kAdd = 2 };

/**
 * elementwise(heap, op, count, a, b (-1 for unary ops), dst): reluForward dst = max(a, 0);
 * reluBackward dst = a * (b > 0) (a: upstream gradient, b: the relu's input); add dst = a + b.
 */
Napi::Value ElementwiseOp(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const int64_t op = integerArg(info, 1, "op", kReluForward, kAdd);
  const int64_t count = integerArg(info, 2, "count", 1, kMaxDim * 4);
  float* a = tensorAt(env, heap, integerArg(info, 3, "a", 0, INT64_MAX / 2), count, "a");
  const int64_t bOffset = integerArg(info, 4, "b", -1, INT64_MAX / 2);
  if ((op == kReluForward) != (bOffset < 0)) {
    throw Napi::RangeError::New(env, op == kReluForward ? "'b' must be -1 for a unary op" : "'b' is required");
  }
  float* b = bOffset < 0 ? nullptr : tensorAt(env, heap, bOffset, count, "b");
  float* dst = tensorAt(env, heap, integerArg(info, 5, "dst", 0, INT64_MAX / 2), count, "dst");

  wrapDnnlErrors(env, [&] {
    std::ostringstream key;
    key << op << '|' << count;
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = eltwiseCache[key.str()];
    const memory::desc flat = flatDesc(count);
    if (!entry) {
      auto forward = dnnl::eltwise_forward::primitive_desc(
          dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::eltwise_relu, flat, 0.f),
          cpuEngine());
      if (op == kReluForward) {
        entry.reset(new EltwiseEntry{threads, dnnl::eltwise_forward(forward), forward.impl_info_str()});
      } else if (op == kReluBackward) {
        dnnl::eltwise_backward::primitive_desc pd(
            dnnl::eltwise_backward::desc(dnnl::algorithm::eltwise_relu, flat, flat, 0.f), cpuEngine(), forward);
        entry.reset(new EltwiseEntry{threads, dnnl::eltwise_backward(pd), pd.impl_info_str()});
      } else {
        dnnl::binary::primitive_desc pd(dnnl::binary::desc(dnnl::algorithm::binary_add, flat, flat, flat),
                                        cpuEngine());
        entry.reset(new EltwiseEntry{threads, dnnl::binary(pd), pd.impl_info_str()});
      }
    }
    std::unordered_map<int, memory> args;
    if (op == kReluForward) {
      args = {{DNNL_ARG_SRC, memory(flat, cpuEngine(), a)}, {DNNL_ARG_DST, memory(flat, cpuEngine(), dst)}};
    } else if (op == kReluBackward) {
      args = {{DNNL_ARG_DIFF_DST, memory(flat, cpuEngine(), a)},
              {DNNL_ARG_SRC, memory(flat, cpuEngine(), b)},
              {DNNL_ARG_DIFF_SRC, memory(flat, cpuEngine(), dst)}};
    } else {
      args = {{DNNL_ARG_SRC_0, memory(flat, cpuEngine(), a)},
              {DNNL_ARG_SRC_1, memory(flat, cpuEngine(), b)},
              {DNNL_ARG_DST, memory(flat, cpuEngine(), dst)}};
    }
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}


// ---------------------------------------------------------------------------------------------------
// Layer normalisation, softmax and the activations of today's classifiers (layer-kernels.ts):
// transformers and ConvNeXt normalise rows, attention takes a softmax of each row, and GELU, swish,
// hard swish and hard sigmoid are their activations. Each is one multi-threaded pass forward and one
// backward.

/** [rows, size]: `rows` independent rows of `size` values, row-major. */
struct RowGeometry {
  int64_t rows, size;
  static constexpr size_t kCount = 2;

  std::string key() const { return std::to_string(rows) + ',' + std::to_string(size); }
  int64_t count(Napi::Env env) const { return product(env, {rows, size}); }
  memory::desc dataDesc() const { return memory::desc({rows, size}, DataType::f32, Tag::ab); }
  memory::desc statDesc() const { return memory::desc({rows}, DataType::f32, Tag::a); }
  memory::desc rowDesc() const { return memory::desc({size}, DataType::f32, Tag::a); }
};

RowGeometry rowGeometryArg(const Napi::CallbackInfo& info, size_t index) {
  auto v = integersArg(info, index, "geometry", RowGeometry::kCount, 1);
  return {v[0], v[1]};
}

/** A tensor of `count` values at the offset in argument `index`, or nullptr for -1 (absent). */
float* optionalTensor(const Napi::CallbackInfo& info, const Heap& heap, size_t index, const char* name, int64_t count) {
  const int64_t offset = integerArg(info, index, name, -1, INT64_MAX / 2);
  return offset < 0 ? nullptr : tensorAt(info.Env(), heap, offset, count, name);
}

struct LayerNormForwardEntry {
  int threads;
  dnnl::layer_normalization_forward primitive;
  std::string implementation;
};

struct LayerNormBackwardEntry {
  int threads;
  dnnl::layer_normalization_backward primitive;
  std::string implementation;
};

std::unordered_map<std::string, std::unique_ptr<LayerNormForwardEntry>> layerNormForwardCache;
std::unordered_map<std::string, std::unique_ptr<LayerNormBackwardEntry>> layerNormBackwardCache;

dnnl::layer_normalization_forward::primitive_desc layerNormForwardDesc(const RowGeometry& g, float epsilon,
                                                                      dnnl::normalization_flags flags) {
  dnnl::layer_normalization_forward::desc desc(dnnl::prop_kind::forward_training, g.dataDesc(), g.statDesc(),
                                               epsilon, flags);
  return dnnl::layer_normalization_forward::primitive_desc(desc, cpuEngine());
}

/**
 * layerNormForward(heap, [rows, size], src, scale (-1: none), shift (-1: none), dst, mean, variance,
 * epsilon): each row normalised by its mean and biased variance (written to `mean` and `variance`,
 * [rows], for the gradient), then scaled and shifted per column.
 */
Napi::Value LayerNormForward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const RowGeometry g = rowGeometryArg(info, 1);
  const int64_t count = g.count(env);
  float* src = tensorAt(env, heap, integerArg(info, 2, "src", 0, INT64_MAX / 2), count, "src");
  float* scale = optionalTensor(info, heap, 3, "scale", g.size);
  float* shift = optionalTensor(info, heap, 4, "shift", g.size);
  float* dst = tensorAt(env, heap, integerArg(info, 5, "dst", 0, INT64_MAX / 2), count, "dst");
  float* mean = tensorAt(env, heap, integerArg(info, 6, "mean", 0, INT64_MAX / 2), g.rows, "mean");
  float* variance = tensorAt(env, heap, integerArg(info, 7, "variance", 0, INT64_MAX / 2), g.rows, "variance");
  const float epsilon = floatArg(info, 8, "epsilon");
  if (!(epsilon >= 0)) throw Napi::RangeError::New(env, "'epsilon' must be >= 0");

  wrapDnnlErrors(env, [&] {
    const auto flags = normFlags(false, scale != nullptr, shift != nullptr);
    std::ostringstream key;
    key << g.key() << '|' << static_cast<unsigned>(flags) << '|' << epsilon;
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = layerNormForwardCache[key.str()];
    if (!entry) {
      auto pd = layerNormForwardDesc(g, epsilon, flags);
      entry.reset(new LayerNormForwardEntry{threads, dnnl::layer_normalization_forward(pd), pd.impl_info_str()});
    }
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.dataDesc(), cpuEngine(), src)},
        {DNNL_ARG_DST, memory(g.dataDesc(), cpuEngine(), dst)},
        {DNNL_ARG_MEAN, memory(g.statDesc(), cpuEngine(), mean)},
        {DNNL_ARG_VARIANCE, memory(g.statDesc(), cpuEngine(), variance)},
    };
    if (scale) args.emplace(DNNL_ARG_SCALE, memory(g.rowDesc(), cpuEngine(), scale));
    if (shift) args.emplace(DNNL_ARG_SHIFT, memory(g.rowDesc(), cpuEngine(), shift));
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}

/**
 * layerNormBackward(heap, [rows, size], src, diffDst, mean, variance, scale (-1: none), diffSrc,
 * epsilon): the input gradient through the row statistics, with scale and shift as constants.
 */
Napi::Value LayerNormBackward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const RowGeometry g = rowGeometryArg(info, 1);
  const int64_t count = g.count(env);
  float* src = tensorAt(env, heap, integerArg(info, 2, "src", 0, INT64_MAX / 2), count, "src");
  float* diffDst = tensorAt(env, heap, integerArg(info, 3, "diffDst", 0, INT64_MAX / 2), count, "diffDst");
  float* mean = tensorAt(env, heap, integerArg(info, 4, "mean", 0, INT64_MAX / 2), g.rows, "mean");
  float* variance = tensorAt(env, heap, integerArg(info, 5, "variance", 0, INT64_MAX / 2), g.rows, "variance");
  float* scale = optionalTensor(info, heap, 6, "scale", g.size);
  float* diffSrc = tensorAt(env, heap, integerArg(info, 7, "diffSrc", 0, INT64_MAX / 2), count, "diffSrc");
  const float epsilon = floatArg(info, 8, "epsilon");
  if (!(epsilon >= 0)) throw Napi::RangeError::New(env, "'epsilon' must be >= 0");

  wrapDnnlErrors(env, [&] {
    // oneDNN 2.6 differentiates a scaled layer normalisation only with prop_kind backward, which also
    // computes the scale and shift gradients: they go to scratch rows, unread.
    const auto flags = normFlags(false, scale != nullptr, scale != nullptr);
    std::ostringstream key;
    key << g.key() << '|' << static_cast<unsigned>(flags) << '|' << epsilon;
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = layerNormBackwardCache[key.str()];
    if (!entry) {
      auto hint = layerNormForwardDesc(g, epsilon, flags);
      dnnl::layer_normalization_backward::desc desc(scale ? dnnl::prop_kind::backward : dnnl::prop_kind::backward_data,
                                                    g.dataDesc(), g.dataDesc(), g.statDesc(), epsilon, flags);
      dnnl::layer_normalization_backward::primitive_desc pd(desc, cpuEngine(), hint);
      entry.reset(new LayerNormBackwardEntry{threads, dnnl::layer_normalization_backward(pd), pd.impl_info_str()});
    }
    std::vector<float> scratch(scale ? 2 * g.size : 0);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, memory(g.dataDesc(), cpuEngine(), src)},
        {DNNL_ARG_DIFF_DST, memory(g.dataDesc(), cpuEngine(), diffDst)},
        {DNNL_ARG_MEAN, memory(g.statDesc(), cpuEngine(), mean)},
        {DNNL_ARG_VARIANCE, memory(g.statDesc(), cpuEngine(), variance)},
        {DNNL_ARG_DIFF_SRC, memory(g.dataDesc(), cpuEngine(), diffSrc)},
    };
    if (scale) {
      args.emplace(DNNL_ARG_SCALE, memory(g.rowDesc(), cpuEngine(), scale));
      // Required with use_shift, never read by the gradients.
      args.emplace(DNNL_ARG_SHIFT, memory(g.rowDesc(), cpuEngine(), scale));
      args.emplace(DNNL_ARG_DIFF_SCALE, memory(g.rowDesc(), cpuEngine(), scratch.data()));
      args.emplace(DNNL_ARG_DIFF_SHIFT, memory(g.rowDesc(), cpuEngine(), scratch.data() + g.size));
    }
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}

struct SoftmaxEntry {
  int threads;
  dnnl::primitive primitive;
  std::string implementation;
};

std::unordered_map<std::string, std::unique_ptr<SoftmaxEntry>> softmaxCache;

dnnl::softmax_forward::primitive_desc softmaxForwardDesc(const RowGeometry& g) {
  return dnnl::softmax_forward::primitive_desc(
      dnnl::softmax_forward::desc(dnnl::prop_kind::forward_training, g.dataDesc(), 1), cpuEngine());
}

/** softmaxForward(heap, [rows, size], src, dst): the softmax of each row. */
Napi::Value SoftmaxForward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const RowGeometry g = rowGeometryArg(info, 1);
  const int64_t count = g.count(env);
  float* src = tensorAt(env, heap, integerArg(info, 2, "src", 0, INT64_MAX / 2), count, "src");
  float* dst = tensorAt(env, heap, integerArg(info, 3, "dst", 0, INT64_MAX / 2), count, "dst");
  wrapDnnlErrors(env, [&] {
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = softmaxCache["forward " + g.key()];
    if (!entry) {
      auto pd = softmaxForwardDesc(g);
      entry.reset(new SoftmaxEntry{threads, dnnl::softmax_forward(pd), pd.impl_info_str()});
    }
    entry->primitive.execute(cpuStream(), {{DNNL_ARG_SRC, memory(g.dataDesc(), cpuEngine(), src)},
                                           {DNNL_ARG_DST, memory(g.dataDesc(), cpuEngine(), dst)}});
    cpuStream().wait();
  });
  return env.Undefined();
}

/** softmaxBackward(heap, [rows, size], dst, diffDst, diffSrc): the gradient through each row's softmax. */
Napi::Value SoftmaxBackward(const Napi::CallbackInfo& info) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const RowGeometry g = rowGeometryArg(info, 1);
  const int64_t count = g.count(env);
  float* dst = tensorAt(env, heap, integerArg(info, 2, "dst", 0, INT64_MAX / 2), count, "dst");
  float* diffDst = tensorAt(env, heap, integerArg(info, 3, "diffDst", 0, INT64_MAX / 2), count, "diffDst");
  float* diffSrc = tensorAt(env, heap, integerArg(info, 4, "diffSrc", 0, INT64_MAX / 2), count, "diffSrc");
  wrapDnnlErrors(env, [&] {
    const int threads = threadsForValues(count);
    ThreadScope scope(threads);
    auto& entry = softmaxCache["backward " + g.key()];
    if (!entry) {
      dnnl::softmax_backward::primitive_desc pd(dnnl::softmax_backward::desc(g.dataDesc(), g.dataDesc(), 1),
                                                cpuEngine(), softmaxForwardDesc(g));
      entry.reset(new SoftmaxEntry{threads, dnnl::softmax_backward(pd), pd.impl_info_str()});
    }
    entry->primitive.execute(cpuStream(), {{DNNL_ARG_DST, memory(g.dataDesc(), cpuEngine(), dst)},
                                           {DNNL_ARG_DIFF_DST, memory(g.dataDesc(), cpuEngine(), diffDst)},
                                           {DNNL_ARG_DIFF_SRC, memory(g.dataDesc(), cpuEngine(), diffSrc)}});
    cpuStream().wait();
  });
  return env.Undefined();
}

/** Activation codes shared with layer-kernels.ts (ACTIVATION_CODES). */
enum LayerActivation { kGelu = 0, kSwish = 1, kHardSwish = 2, kHardSigmoid = 3 };

std::unordered_map<std::string, std::unique_ptr<EltwiseEntry>> activationCache;

/** The oneDNN algorithm and alpha of an activation code (hard sigmoid has none in oneDNN 2.6). */
std::pair<dnnl::algorithm, float> activationAlgorithm(int64_t op) {
  switch (op) {
    case kGelu:
      return {dnnl::algorithm::eltwise_gelu_erf, 0.f};
    case kSwish:
      return {dnnl::algorithm::eltwise_swish, 1.f};
    default:
      return {dnnl::algorithm::eltwise_hardswish, 0.f};
  }
}

/** Hard sigmoid relu6(x + 3) / 6 and its gradient (1/6 inside (-3, 3)), one pass each. */
void hardSigmoid(const float* src, const float* diffDst, float* out, int64_t count, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t i = 0; i < count; i++) {
    const float x = src[i];
    if (diffDst) {
      out[i] = (x > -3.f && x < 3.f) ? diffDst[i] / 6.f : 0.f;
    } else {
      out[i] = x <= -3.f ? 0.f : x >= 3.f ? 1.f : x / 6.f + 0.5f;
    }
  }
}

/**
 * activationForward(heap, op, count, src, dst) and activationBackward(heap, op, count, diffDst, src,
 * diffSrc): GELU (erf), swish (x sigmoid(x)), hard swish, hard sigmoid over `count` float32 values.
 */
Napi::Value ActivationOp(const Napi::CallbackInfo& info, bool backward) {
  const Napi::Env env = info.Env();
  const Heap heap = heapArg(info, 0);
  const int64_t op = integerArg(info, 1, "op", kGelu, kHardSigmoid);
  const int64_t count = integerArg(info, 2, "count", 1, kMaxDim * 4);
  float* first = tensorAt(env, heap, integerArg(info, 3, backward ? "diffDst" : "src", 0, INT64_MAX / 2), count,
                          backward ? "diffDst" : "src");
  float* src = backward ? tensorAt(env, heap, integerArg(info, 4, "src", 0, INT64_MAX / 2), count, "src") : first;
  const size_t outIndex = backward ? 5 : 4;
  float* out = tensorAt(env, heap, integerArg(info, outIndex, backward ? "diffSrc" : "dst", 0, INT64_MAX / 2),
                        count, backward ? "diffSrc" : "dst");
  const int threads = threadsForValues(count);
  if (op == kHardSigmoid) {
    ThreadScope scope(threads);
    hardSigmoid(src, backward ? first : nullptr, out, count, threads);
    return env.Undefined();
  }
  wrapDnnlErrors(env, [&] {
    std::ostringstream key;
    key << (backward ? "backward " : "forward ") << op << '|' << count;
    ThreadScope scope(threads);
    auto& entry = activationCache[key.str()];
    const memory::desc flat = flatDesc(count);
    const auto [algorithm, alpha] = activationAlgorithm(op);
    if (!entry) {
      auto forward = dnnl::eltwise_forward::primitive_desc(
          dnnl::eltwise_forward::desc(dnnl::prop_kind::forward_training, algorithm, flat, alpha), cpuEngine());
      if (!backward) {
        entry.reset(new EltwiseEntry{threads, dnnl::eltwise_forward(forward), forward.impl_info_str()});
      } else {
        dnnl::eltwise_backward::primitive_desc pd(dnnl::eltwise_backward::desc(algorithm, flat, flat, alpha),
                                                  cpuEngine(), forward);
        entry.reset(new EltwiseEntry{threads, dnnl::eltwise_backward(pd), pd.impl_info_str()});
      }
    }
    std::unordered_map<int, memory> args;
    if (!backward) {
      args = {{DNNL_ARG_SRC, memory(flat, cpuEngine(), src)}, {DNNL_ARG_DST, memory(flat, cpuEngine(), out)}};
    } else {
      args = {{DNNL_ARG_DIFF_DST, memory(flat, cpuEngine(), first)},
              {DNNL_ARG_SRC, memory(flat, cpuEngine(), src)},
              {DNNL_ARG_DIFF_SRC, memory(flat, cpuEngine(), out)}};
    }
    entry->primitive.execute(cpuStream(), args);
    cpuStream().wait();
  });
  return env.Undefined();
}

Napi::Value ActivationForward(const Napi::CallbackInfo& info) { return ActivationOp(info, false); }
Napi::Value ActivationBackward(const Napi::CallbackInfo& info) { return ActivationOp(info, true); }

// ---------------------------------------------------------------------------------------------------
// Threads and introspection

/** setThreads(n): OpenMP threads for every later primitive call. */
Napi::Value SetThreads(const Napi::CallbackInfo& info) {
  const int threads = static_cast<int>(integerArg(info, 0, "threads", 1, 4096));
  std::lock_guard<std::mutex> lock(callMutex);
  // Primitives created for another thread count are created again (some fix their split at creation).
  if (threads != configuredThreads) {
    forwardCache.clear();
    backwardDataCache.clear();
    backwardWeightsCache.clear();
    matMulCache.clear();
    normForwardCache.clear();
    normBackwardCache.clear();
    eltwiseCache.clear();
    layerNormForwardCache.clear();
    layerNormBackwardCache.clear();
    softmaxCache.clear();
    activationCache.clear();
  }
  configuredThreads = threads;
  return info.Env().Undefined();
}

Napi::Value Threads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), configuredThreads);
}

Napi::Value Version(const Napi::CallbackInfo& info) {
  const dnnl_version_t* version = dnnl_version();
  std::ostringstream out;
  out << version->major << '.' << version->minor << '.' << version->patch;
  return Napi::String::New(info.Env(), out.str());
}

/** { 'forward <geometry>': 'brgconv:avx512_core', ... } for every cached primitive. */
Napi::Value Implementations(const Napi::CallbackInfo& info) {
  Napi::Object result = Napi::Object::New(info.Env());
  std::lock_guard<std::mutex> lock(callMutex);
  auto describe = [](const auto& entry) {
    return entry->implementation + " (" + std::to_string(entry->threads) + " threads)";
  };
  for (auto& [key, entry] : forwardCache) result.Set("conv forward " + key, describe(entry));
  for (auto& [key, entry] : backwardDataCache) result.Set("conv backward data " + key, describe(entry));
  for (auto& [key, entry] : backwardWeightsCache) result.Set("conv backward weights " + key, describe(entry));
  for (auto& [key, entry] : matMulCache) result.Set("matmul " + key, describe(entry));
  for (auto& [key, entry] : normForwardCache) result.Set("batch norm forward " + key, describe(entry));
  for (auto& [key, entry] : normBackwardCache) result.Set("batch norm backward " + key, describe(entry));
  for (auto& [key, entry] : eltwiseCache) result.Set("elementwise " + key, describe(entry));
  for (auto& [key, entry] : layerNormForwardCache) result.Set("layer norm forward " + key, describe(entry));
  for (auto& [key, entry] : layerNormBackwardCache) result.Set("layer norm backward " + key, describe(entry));
  for (auto& [key, entry] : softmaxCache) result.Set("softmax " + key, describe(entry));
  for (auto& [key, entry] : activationCache) result.Set("activation " + key, describe(entry));
  return result;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("convForward", Napi::Function::New(env, ConvForward));
  exports.Set("convBackwardData", Napi::Function::New(env, ConvBackwardData));
  exports.Set("convBackwardWeights", Napi::Function::New(env, ConvBackwardWeights));
  exports.Set("matMul", Napi::Function::New(env, MatMul));
  exports.Set("batchNormForward", Napi::Function::New(env, BatchNormForward));
  exports.Set("batchNormBackward", Napi::Function::New(env, BatchNormBackward));
  exports.Set("elementwise", Napi::Function::New(env, ElementwiseOp));
  exports.Set("layerNormForward", Napi::Function::New(env, LayerNormForward));
  exports.Set("layerNormBackward", Napi::Function::New(env, LayerNormBackward));
  exports.Set("softmaxForward", Napi::Function::New(env, SoftmaxForward));
  exports.Set("softmaxBackward", Napi::Function::New(env, SoftmaxBackward));
  exports.Set("activationForward", Napi::Function::New(env, ActivationForward));
  exports.Set("activationBackward", Napi::Function::New(env, ActivationBackward));
  exports.Set("setThreads", Napi::Function::New(env, SetThreads));
  exports.Set("threads", Napi::Function::New(env, Threads));
  exports.Set("version", Napi::Function::New(env, Version));
  exports.Set("implementations", Napi::Function::New(env, Implementations));
  return exports;
}

}  // namespace

NODE_API_MODULE(ratio_onednn, Init)
