// cudasim: a CUDA-semantics runtime that runs the kernels of kernels/*.cu as plain C++ on the CPU, so that the test
// suite executes them without a GPU (scripts/build_cudasim.py builds them against it; docs/using-the-ops.md).
// Over 400 lines: the CUDA built-ins, the checks and the launch belong together and are read together.
//
// Model. A launch runs the grid's blocks one after another (CUDASIM_CONCURRENT_BLOCKS=n: n at a time); the threads
// of a block run as real OS threads, so that __syncthreads and the warp shuffles are real rendezvous and
// ThreadSanitizer sees two CUDA threads as two threads. __shared__ is `static` storage: one copy, valid because one
// block of a kernel with __shared__ runs at a time (a concurrent run of such a kernel is refused).
//
// What a launch reports (thrown by C10_CUDA_KERNEL_LAUNCH_CHECK, see the CUDAException.h shim), i.e. what a GPU
// would reject or silently corrupt:
//   * geometry: block volume in [1, 1024], grid.x in [1, max_grid_x()], grid.y/z in [1, 65535], block.z <= 64,
//     dynamic shared memory <= 48 KiB (cudaErrorInvalidConfiguration);
//   * a __syncthreads reached by some threads of a block only (different counts per thread: undefined behaviour);
//   * warp shuffles whose mask omits the caller or names lanes that do not exist, that read a lane outside the
//     mask or one that did not take part, a lane exiting while others of its warp wait in a shuffle, lanes of a
//     warp doing different numbers of shuffles;
//   * a rendezvous waiting longer than CUDASIM_TIMEOUT_S seconds (default 20): a deadlock;
//   * a failed device-side check (RELGROUND_DEVICE_CHECK, kernels/cuda_helpers.cuh), an exception in a thread.
// Not modelled: warp lock-step (warp-synchronous code without __syncwarp is a race here, as on Volta and later),
// the memory model and caches, device math-library rounding (std::log on the host, 1-2 ulp apart on a GPU).
#pragma once

#include <algorithm>
#include <atomic>
#include <barrier>
#include <bit>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA C++ keywords and built-in types --------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
// Block-scope __shared__ only (the kernels' use): notes the kernel uses shared memory, then one static copy.
#define __shared__ \
  ::cudasim::note_shared(); \
  static

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;

inline constexpr int warpSize = 32;

// The built-in variables, per OS thread = per simulated CUDA thread.
inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline thread_local dim3 blockDim{1, 1, 1};
inline thread_local dim3 gridDim{1, 1, 1};

namespace cudasim {

inline uint64_t env_number(const char* name, uint64_t fallback) {
  const char* s = std::getenv(name);
  return s && *s ? std::strtoull(s, nullptr, 10) : fallback;
}

// The largest grid.x: 2^31 - 1 as on every GPU since sm_30; CUDASIM_MAX_GRID_X lowers it so that tests reach the
// code that splits a launch (read on every call).
inline uint64_t max_grid_x() { return std::min<uint64_t>(env_number("CUDASIM_MAX_GRID_X", 2147483647u), 2147483647u); }

inline std::chrono::duration<double> rendezvous_timeout() {
  return std::chrono::duration<double>(static_cast<double>(env_number("CUDASIM_TIMEOUT_S", 20)));
}

// What went wrong in the current launch, from every thread; check_last_launch() throws it.
class Findings {
 public:
  void add(std::string message) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (messages_.size() < 12) messages_.push_back(std::move(message));
    ++count_;
  }
  bool empty() {
    std::lock_guard<std::mutex> lock(mutex_);
    return count_ == 0;
  }
  std::string take() {
    std::lock_guard<std::mutex> lock(mutex_);
    std::ostringstream out;
    for (const auto& m : messages_) out << "\n  " << m;
    if (count_ > messages_.size()) out << "\n  ... and " << (count_ - messages_.size()) << " more";
    messages_.clear();
    count_ = 0;
    return out.str();
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> messages_;
  size_t count_ = 0;
};

inline Findings& findings() {
  static Findings f;
  return f;
}

inline std::string& last_kernel() {
  static std::string name;
  return name;
}

// Throws (and clears) the findings of the last launch.
inline void check_last_launch() {
  if (findings().empty()) return;
  throw std::runtime_error("cudasim: kernel " + last_kernel() + " failed:" + findings().take());
}

// A rendezvous of `expected` threads from which an exiting thread is dropped (an exited GPU thread no longer counts
// at a barrier). Returns false from arrive_and_wait on timeout (a deadlock).
class DropBarrier {
 public:
  void reset(int expected) {
    std::lock_guard<std::mutex> lock(mutex_);
    expected_ = expected;
    arrived_ = 0;
  }
  bool arrive_and_wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    const uint64_t generation = generation_;
    if (++arrived_ == expected_) {
      next_phase();
      return true;
    }
    return cv_.wait_for(lock, rendezvous_timeout(), [&] { return generation_ != generation; });
  }
  // Removes one thread; returns how many were waiting at that moment.
  int drop() {
    std::lock_guard<std::mutex> lock(mutex_);
    --expected_;
    const int waiting = arrived_;
    if (arrived_ > 0 && arrived_ == expected_) next_phase();
    return waiting;
  }

 private:
  void next_phase() {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
  }
  std::mutex mutex_;
  std::condition_variable cv_;
  int expected_ = 0, arrived_ = 0;
  uint64_t generation_ = 0;
};

struct Warp {
  DropBarrier barrier;                     // its live lanes
  alignas(16) unsigned char slot[32][16];  // one value per lane, for the shuffles
  unsigned existing = 0;                   // lanes that exist (a partial last warp has fewer than 32)
  std::atomic<unsigned> posted{0};         // lanes that wrote their slot in the current shuffle
  unsigned shuffles[32] = {};              // shuffles done per lane
};

struct Block {
  DropBarrier barrier;          // __syncthreads over the live threads
  std::vector<unsigned> syncs;  // __syncthreads passed, per thread
  std::vector<Warp> warps;
  uint64_t index = 0;  // linear index of the block being run
};

inline thread_local Block* this_block = nullptr;
inline thread_local int this_thread = 0;  // linear thread index within the block

inline void report(const std::string& what) {
  std::ostringstream out;
  out << "block (" << blockIdx.x << "," << blockIdx.y << "," << blockIdx.z << ") thread (" << threadIdx.x << ","
      << threadIdx.y << "," << threadIdx.z << "): " << what;
  findings().add(out.str());
}

// A failed RELGROUND_DEVICE_CHECK: a device-side assert on a GPU.
inline void device_check_failed(const char* message, long long row) {
  report(std::string("device-side check failed: ") + message + " (row " + std::to_string(row) + ")");
}

// How many blocks of the current launch run at once (1 unless CUDASIM_CONCURRENT_BLOCKS says more).
inline std::atomic<int>& concurrent_blocks() {
  static std::atomic<int> n{1};
  return n;
}

inline void note_shared() {
  if (concurrent_blocks().load(std::memory_order_relaxed) > 1 && threadIdx.x + threadIdx.y + threadIdx.z == 0) {
    report("the kernel declares __shared__ memory: run it with CUDASIM_CONCURRENT_BLOCKS=1");
  }
}

// The core of every shuffle: each lane of `mask` posts `value`, then reads lane `src_lane`'s. Two rendezvous.
template <typename T>
T shuffle(unsigned mask, T value, int src_lane, const char* name) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable_v<T>, "cudasim: shuffle of a type over 16 bytes");
  Warp& warp = this_block->warps[this_thread / 32];
  const int lane = this_thread % 32;
  const unsigned me = 1u << lane;
  if (!(mask & me)) report(std::string(name) + ": the mask does not name the calling lane");
  if (mask & ~warp.existing) {
    std::ostringstream out;
    out << name << ": mask 0x" << std::hex << mask << " names lanes that do not exist (this warp has 0x"
        << warp.existing << "; a block size that is not a multiple of 32?)";
    report(out.str());
  }
  ++warp.shuffles[lane];
  std::memcpy(warp.slot[lane], &value, sizeof(T));
  warp.posted.fetch_or(me);
  if (!warp.barrier.arrive_and_wait()) report(std::string(name) + ": timed out (deadlock: lanes diverged?)");
  T result = value;
  if (src_lane >= 0 && src_lane < 32) {
    const unsigned src = 1u << src_lane;
    if (!(mask & src) || !(warp.posted.load() & src)) {
      report(std::string(name) + ": reads lane " + std::to_string(src_lane) +
             ", which is outside the mask or did not take part (an undefined value on a GPU)");
    } else {
      std::memcpy(&result, warp.slot[src_lane], sizeof(T));
    }
  }
  if (!warp.barrier.arrive_and_wait()) report(std::string(name) + ": timed out (deadlock: lanes diverged?)");
  warp.posted.fetch_and(~me);
  return result;
}

}  // namespace cudasim

// ---- device functions ----------------------------------------------------------------------------------------------
inline void __syncthreads() {
  cudasim::Block* block = cudasim::this_block;
  ++block->syncs[cudasim::this_thread];
  if (!block->barrier.arrive_and_wait()) cudasim::report("__syncthreads timed out (deadlock)");
}

inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = warpSize) {
  const int lane = cudasim::this_thread % 32;
  int src = lane ^ lane_mask;
  if (src >= (lane / width + 1) * width) src = lane;  // beyond the lane's group: its own value (CUDA's rule)
  return cudasim::shuffle(mask, value, src, "__shfl_xor_sync");
}

template <typename T>
T __shfl_sync(unsigned mask, T value, int src_lane, int width = warpSize) {
  const int lane = cudasim::this_thread % 32;
  return cudasim::shuffle(mask, value, (lane / width) * width + src_lane % width, "__shfl_sync");
}

template <typename T>
T __shfl_down_sync(unsigned mask, T value, unsigned delta, int width = warpSize) {
  const int lane = cudasim::this_thread % 32;
  const int src = lane % width + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return cudasim::shuffle(mask, value, src, "__shfl_down_sync");
}

inline void __syncwarp(unsigned mask = 0xffffffffu) { cudasim::shuffle(mask, 0, cudasim::this_thread % 32, "__syncwarp"); }

template <typename T>
T atomicAdd(T* address, T value) {
  static_assert(std::is_arithmetic_v<T>, "cudasim: atomicAdd of a type other than an integer or float/double");
  return std::atomic_ref<T>(*address).fetch_add(value, std::memory_order_relaxed);
}

namespace cudasim {

// ---- launch ----------------------------------------------------------------------------------------------------------
inline uint64_t volume(const dim3& d) { return uint64_t(d.x) * d.y * d.z; }

inline bool valid_geometry(const dim3& grid, const dim3& block, size_t shared_bytes) {
  std::ostringstream out;
  if (volume(block) == 0 || volume(block) > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64) {
    out << "invalid block (" << block.x << "," << block.y << "," << block.z << "): 1 to 1024 threads";
  } else if (volume(grid) == 0 || grid.x > max_grid_x() || grid.y > 65535 || grid.z > 65535) {
    out << "invalid grid (" << grid.x << "," << grid.y << "," << grid.z << "): x in [1, " << max_grid_x()
        << "], y and z in [1, 65535]";
  } else if (shared_bytes > 48 * 1024) {
    out << "dynamic shared memory of " << shared_bytes << " bytes > 48 KiB without an opt-in";
  }
  if (out.str().empty()) return true;
  findings().add("launch: " + out.str() + " (cudaErrorInvalidConfiguration on a GPU)");
  return false;
}

// Runs `body()` as every thread of every block of a <<<grid, block, shared_bytes>>> launch; returns when done.
template <typename Body>
void run_grid(const char* name, dim3 grid, dim3 block, size_t shared_bytes, const Body& body) {
  last_kernel() = name;
  if (!valid_geometry(grid, block, shared_bytes)) return;
  const int threads = static_cast<int>(volume(block));
  const uint64_t blocks = volume(grid);
  const int groups = static_cast<int>(std::clamp<uint64_t>(env_number("CUDASIM_CONCURRENT_BLOCKS", 1), 1, blocks));
  concurrent_blocks() = groups;
  std::vector<Block> state(groups);  // group g runs blocks g, g + groups, ...

  auto reset = [threads](Block& b) {
    b.barrier.reset(threads);
    std::fill(b.syncs.begin(), b.syncs.end(), 0u);
    for (size_t w = 0; w < b.warps.size(); ++w) {
      Warp& warp = b.warps[w];
      const int lanes = std::min(32, threads - static_cast<int>(w) * 32);
      warp.existing = lanes == 32 ? 0xffffffffu : (1u << lanes) - 1u;
      warp.barrier.reset(lanes);
      warp.posted = 0;
      std::fill(std::begin(warp.shuffles), std::end(warp.shuffles), 0u);
    }
  };
  // After a block: every thread passed the same number of __syncthreads; the lanes of a warp did the same number
  // of shuffles.
  auto check = [](const Block& b) {
    const auto [lo, hi] = std::minmax_element(b.syncs.begin(), b.syncs.end());
    if (*lo != *hi) {
      std::ostringstream out;
      out << "block " << b.index << ": __syncthreads reached by some threads only: thread " << (lo - b.syncs.begin())
          << " passed " << *lo << ", thread " << (hi - b.syncs.begin()) << " passed " << *hi
          << " (an early return or a barrier inside a branch)";
      findings().add(out.str());
    }
    for (size_t w = 0; w < b.warps.size(); ++w) {
      const Warp& warp = b.warps[w];
      const auto [slo, shi] = std::minmax_element(warp.shuffles, warp.shuffles + std::popcount(warp.existing));
      if (*slo != *shi) {
        std::ostringstream out;
        out << "block " << b.index << " warp " << w << ": lanes did different numbers of warp shuffles (" << *slo
            << " vs " << *shi << ")";
        findings().add(out.str());
      }
    }
  };
  struct EndOfBlock {  // std::barrier's completion step: check the block, then set up the group's next one
    Block* b;
    uint64_t stride, blocks;
    decltype(check)* check_fn;
    decltype(reset)* reset_fn;
    void operator()() noexcept {
      (*check_fn)(*b);
      b->index += stride;
      if (b->index < blocks) (*reset_fn)(*b);
    }
  };
  std::vector<std::unique_ptr<std::barrier<EndOfBlock>>> end_of_block;
  for (int g = 0; g < groups; ++g) {
    state[g].index = g;
    state[g].syncs.assign(threads, 0);
    state[g].warps = std::vector<Warp>((threads + 31) / 32);
    reset(state[g]);
    end_of_block.push_back(std::make_unique<std::barrier<EndOfBlock>>(
        threads, EndOfBlock{&state[g], static_cast<uint64_t>(groups), blocks, &check, &reset}));
  }

  auto worker = [&](int g, int t) {
    Block& b = state[g];
    this_block = &b;
    this_thread = t;
    blockDim = block;
    gridDim = grid;
    threadIdx = {static_cast<unsigned>(t % block.x), static_cast<unsigned>(t / block.x % block.y),
                 static_cast<unsigned>(t / (block.x * block.y))};
    for (uint64_t i = g; i < blocks; i += groups) {
      blockIdx = {static_cast<unsigned>(i % grid.x), static_cast<unsigned>(i / grid.x % grid.y),
                  static_cast<unsigned>(i / (uint64_t(grid.x) * grid.y))};
      try {
        body();
      } catch (const std::exception& e) {
        report(std::string("exception: ") + e.what());
      }
      // This thread has exited: it no longer counts at its block's and its warp's rendezvous.
      if (b.warps[t / 32].barrier.drop() > 0) report("exited while other lanes of its warp wait in a shuffle");
      b.barrier.drop();  // a divergent __syncthreads shows in the per-thread counts (check)
      end_of_block[g]->arrive_and_wait();
    }
    this_block = nullptr;
  };
  std::vector<std::thread> pool;
  pool.reserve(size_t(threads) * groups);
  for (int g = 0; g < groups; ++g)
    for (int t = 0; t < threads; ++t) pool.emplace_back(worker, g, t);
  for (auto& thread : pool) thread.join();
  concurrent_blocks() = 1;
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...): the arguments are converted to the kernel's parameter
// types and copied once, as CUDA copies them into the launch's parameter buffer.
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t /*stream*/, Args&&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "cudasim: wrong number of kernel arguments");
  const std::tuple<std::decay_t<Params>...> copied(static_cast<std::decay_t<Params>>(std::forward<Args>(args))...);
  run_grid(name, grid, block, shared_bytes, [&] { std::apply(kernel, copied); });
}

}  // namespace cudasim
