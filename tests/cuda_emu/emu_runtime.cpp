// The CPU emulator's scheduler and runtime state (see include/cuda_runtime.h for what it is and checks).
//
// A launch runs on the calling OS thread. Each CUDA thread is a fiber (ucontext) with a 128 KiB stack cut
// from one mapping per launch (a mapping per stack would exhaust the kernel's map count at an H100's 33792
// threads); a canary at the bottom of each stack turns an overflow into a launch error. The scheduler resumes the ready threads of a block one after another, each runs until it
// reaches a barrier or returns, and a barrier is released once every live thread of the block (grid)
// waits at it. Blocks of an ordinary launch run one after another; the blocks of a cooperative launch all
// exist at once and meet at every grid barrier.
#include <cuda_runtime.h>

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>
#include <stdexcept>
#include <vector>

namespace wcrnn_emu {
namespace {

constexpr size_t kStackBytes = 128 * 1024;
constexpr size_t kCanaryBytes = 1024;
constexpr unsigned char kCanary = 0xA5;
constexpr int kDefaultSmemLimit = 48 * 1024;  // dynamic shared memory without cudaFuncSetAttribute
constexpr int kMaxThreadsPerSM = 2048;
constexpr int kMaxBlocksPerSM = 32;

enum class St { kReady, kBlockBarrier, kGridBarrier, kDone };

struct Block;

struct Fiber {
  ucontext_t ctx;
  unsigned char* stack = nullptr;  // kStackBytes, the lowest kCanaryBytes hold the canary
  uint3 tid{};
  Block* block = nullptr;
  St st = St::kReady;
  const char* file = "";
  int line = 0;
};

struct FreeDeleter {
  void operator()(unsigned char* p) const { std::free(p); }
};

struct Block {
  uint3 idx{};
  std::unique_ptr<unsigned char, FreeDeleter> smem_alloc;  // exactly the launch's bytes: ASan sees overflows
  unsigned char* smem = nullptr;
  std::vector<std::unique_ptr<Fiber>> threads;
};

enum class Order { kForward, kReverse, kShuffle };

// One anonymous mapping (pages are only backed once touched) holding the stacks of `n` threads, above one
// spare stack that no thread uses: the lowest thread's overflow lands there, not in foreign memory.
struct Stacks {
  unsigned char* base = nullptr;
  size_t bytes = 0;
  explicit Stacks(size_t n) : bytes((n + 1) * kStackBytes) {
    void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("CUDA emulator: mmap of the thread stacks failed");
    base = static_cast<unsigned char*>(m);
  }
  ~Stacks() { munmap(base, bytes); }
  Stacks(const Stacks&) = delete;
  Stacks& operator=(const Stacks&) = delete;
  unsigned char* stack(size_t i) const { return base + (i + 1) * kStackBytes; }
};

struct Launch {
  dim3 grid, block;
  bool cooperative = false;
  std::function<void()> body;
  ucontext_t sched;
  Fiber* cur = nullptr;
  std::string error;  // the first problem found; the launch stops there
  Order order = Order::kForward;
  std::mt19937_64 rng;
  int64_t block_barriers = 0, grid_barriers = 0;
};

thread_local Launch* g_launch = nullptr;
thread_local cudaError_t g_last = cudaSuccess;
thread_local std::string g_message;
thread_local std::vector<std::string> g_log;
std::mutex g_attr_mutex;
std::map<const void*, int> g_max_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize per kernel


long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  if (end == v || *end != '\0' || n < 1) throw std::invalid_argument(std::string(name) + ": expected a positive integer, got '" + v + "'");
  return n;
}

int sms() { return static_cast<int>(env_long("WCRNN_EMU_SMS", 8)); }
int smem_optin() { return static_cast<int>(env_long("WCRNN_EMU_SMEM_OPTIN", 232448)); }

Order order_from_env(uint64_t* seed) {
  *seed = static_cast<uint64_t>(env_long("WCRNN_EMU_SEED", 1));
  const char* v = std::getenv("WCRNN_EMU_ORDER");
  const std::string s = v ? v : "";
  if (s.empty() || s == "forward") return Order::kForward;
  if (s == "reverse") return Order::kReverse;
  if (s == "shuffle") return Order::kShuffle;
  throw std::invalid_argument("WCRNN_EMU_ORDER: expected forward, reverse or shuffle, got '" + s + "'");
}

std::vector<size_t> order_of(Launch& L, size_t n) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  if (L.order == Order::kReverse) std::reverse(idx.begin(), idx.end());
  if (L.order == Order::kShuffle) std::shuffle(idx.begin(), idx.end(), L.rng);
  return idx;
}

void fail(Launch& L, const std::string& what) {
  if (L.error.empty()) L.error = what;
}

std::string where(const Block& b) {
  std::ostringstream s;
  s << "block (" << b.idx.x << ", " << b.idx.y << ", " << b.idx.z << ")";
  return s.str();
}

std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

void fiber_entry() {
  Launch* L = g_launch;
  try {
    L->body();
  } catch (const std::exception& e) {
    fail(*L, std::string("a thread threw: ") + e.what());
  } catch (...) {
    fail(*L, "a thread threw a non-standard exception");
  }
  L->cur->st = St::kDone;
  // returning switches to uc_link, the scheduler
}

void resume(Launch& L, Fiber* f) {
  L.cur = f;
  swapcontext(&L.sched, &f->ctx);
  L.cur = nullptr;
}

// Block `linear` of the grid; its threads take stacks first_stack, first_stack + 1, ... of `stacks`.
void make_block(Launch& L, Block& b, size_t smem, unsigned int linear, const Stacks& stacks, size_t first_stack) {
  b.idx = uint3{linear % L.grid.x, (linear / L.grid.x) % L.grid.y, linear / (L.grid.x * L.grid.y)};
  void* mem = nullptr;
  if (posix_memalign(&mem, 16, smem > 0 ? smem : 1) != 0) throw std::bad_alloc();
  b.smem_alloc.reset(static_cast<unsigned char*>(mem));
  b.smem = b.smem_alloc.get();
  std::memset(b.smem, 0xFF, smem);  // NaN in every float type: reading unwritten shared memory shows
  const unsigned int n = L.block.x * L.block.y * L.block.z;
  b.threads.reserve(n);
  for (unsigned int t = 0; t < n; ++t) {
    auto f = std::make_unique<Fiber>();
    f->tid = uint3{t % L.block.x, (t / L.block.x) % L.block.y, t / (L.block.x * L.block.y)};
    f->block = &b;
    f->stack = stacks.stack(first_stack + t);
    std::memset(f->stack, kCanary, kCanaryBytes);
    getcontext(&f->ctx);
    f->ctx.uc_stack.ss_sp = f->stack;
    f->ctx.uc_stack.ss_size = kStackBytes;
    f->ctx.uc_link = &L.sched;
    makecontext(&f->ctx, fiber_entry, 0);
    b.threads.push_back(std::move(f));
  }
}

// The stacks grow down: a thread that used more than its stack wrote over its canary (and maybe into the
// stack below it, which belongs to another thread of this launch).
void check_stacks(Launch& L, const Block& b) {
  for (auto& f : b.threads) {
    for (size_t i = 0; i < kCanaryBytes; ++i) {
      if (f->stack[i] != kCanary) {
        fail(L, where(b) + ": thread " + std::to_string(f->tid.x) + " overflowed its " +
                    std::to_string(kStackBytes / 1024) + " KiB emulator stack");
        return;
      }
    }
  }
}

// Runs the block until every live thread waits at a grid barrier or has returned; false on an error.
bool run_block(Launch& L, Block& b) {
  while (true) {
    for (size_t i : order_of(L, b.threads.size())) {
      Fiber* f = b.threads[i].get();
      if (f->st != St::kReady) continue;
      resume(L, f);
      if (!L.error.empty()) return false;
    }
    size_t at_block = 0, at_grid = 0, done = 0;
    const Fiber* first = nullptr;
    for (auto& f : b.threads) {
      if (f->st == St::kBlockBarrier) {
        ++at_block;
        if (first == nullptr) first = f.get();
      } else if (f->st == St::kGridBarrier) {
        ++at_grid;
      } else if (f->st == St::kDone) {
        ++done;
      }
    }
    if (at_block == 0) return true;
    if (at_grid > 0) {
      fail(L, where(b) + ": " + std::to_string(at_block) + " threads wait at __syncthreads() (" + site(*first) +
                  ") while " + std::to_string(at_grid) + " wait at the grid barrier");
      return false;
    }
    if (done > 0) {
      fail(L, where(b) + ": __syncthreads() at " + site(*first) + " is reached by " + std::to_string(at_block) +
                  " threads while " + std::to_string(done) + " have returned");
      return false;
    }
    for (auto& f : b.threads) {
      if (f->line != first->line || std::strcmp(f->file, first->file) != 0) {
        fail(L, where(b) + ": threads wait at different __syncthreads(): " + site(*first) + " and " + site(*f));
        return false;
      }
    }
    ++L.block_barriers;
    for (auto& f : b.threads) f->st = St::kReady;
  }
}

// Runs blocks that must all be resident at once (a cooperative launch, or one block).
bool run_together(Launch& L, std::vector<std::unique_ptr<Block>>& blocks) {
  while (true) {
    for (size_t i : order_of(L, blocks.size())) {
      if (!run_block(L, *blocks[i])) return false;
    }
    size_t at_grid = 0, done = 0;
    const Fiber* first = nullptr;
    for (auto& b : blocks) {
      for (auto& f : b->threads) {
        if (f->st == St::kGridBarrier) {
          ++at_grid;
          if (first == nullptr) first = f.get();
        } else {
          ++done;
        }
      }
    }
    if (at_grid == 0) return true;
    if (done > 0) {
      fail(L, "the grid barrier at " + site(*first) + " is reached by " + std::to_string(at_grid) +
                  " threads while " + std::to_string(done) + " have returned (a GPU would hang)");
      return false;
    }
    for (auto& b : blocks) {
      for (auto& f : b->threads) {
        if (f->line != first->line || std::strcmp(f->file, first->file) != 0) {
          fail(L, "threads wait at different grid barriers: " + site(*first) + " and " + site(*f) + " (" +
                      where(*b) + ")");
          return false;
        }
        f->st = St::kReady;
      }
    }
    ++L.grid_barriers;
  }
}

cudaError_t set_error(cudaError_t e, const std::string& message) {
  g_last = e;
  g_message = message;
  return e;
}

}  // namespace

// ---- device side ------------------------------------------------------------------------------------

static Fiber& current(const char* what) {
  if (g_launch == nullptr || g_launch->cur == nullptr) {
    std::fprintf(stderr, "CUDA emulator: %s outside a kernel\n", what);
    std::abort();
  }
  return *g_launch->cur;
}

const uint3& thread_idx() { return current("threadIdx").tid; }
const uint3& block_idx() { return current("blockIdx").block->idx; }
const dim3& block_dim() { current("blockDim"); return g_launch->block; }
const dim3& grid_dim() { current("gridDim"); return g_launch->grid; }
unsigned char* dynamic_smem() { return current("shared memory").block->smem; }

void syncthreads(const char* file, int line) {
  Fiber& f = current("__syncthreads");
  f.st = St::kBlockBarrier;
  f.file = file;
  f.line = line;
  swapcontext(&f.ctx, &g_launch->sched);
}

void grid_sync(const char* file, int line) {
  Fiber& f = current("grid.sync");
  if (!g_launch->cooperative) fail(*g_launch, "grid.sync() at " + std::string(file) + ":" + std::to_string(line) +
                                              " in a launch that is not cooperative");
  f.st = St::kGridBarrier;
  f.file = file;
  f.line = line;
  swapcontext(&f.ctx, &g_launch->sched);
}

// ---- runtime API ------------------------------------------------------------------------------------

cudaError_t device_attribute(int* value, cudaDeviceAttr attr, int) {
  try {
    switch (attr) {
      case cudaDevAttrMultiProcessorCount: *value = sms(); return cudaSuccess;
      case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = smem_optin(); return cudaSuccess;
      case cudaDevAttrCooperativeLaunch: *value = 1; return cudaSuccess;
    }
  } catch (const std::exception& e) {
    return set_error(cudaErrorInvalidValue, e.what());
  }
  return set_error(cudaErrorInvalidValue, "device attribute not emulated");
}

cudaError_t set_max_dynamic_smem(const void* func, int bytes) {
  if (bytes < 0 || bytes > smem_optin()) {
    return set_error(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(bytes) +
                                                " bytes of dynamic shared memory, the device allows " +
                                                std::to_string(smem_optin()));
  }
  std::lock_guard<std::mutex> lock(g_attr_mutex);
  g_max_smem[func] = bytes;
  return cudaSuccess;
}

cudaError_t occupancy(int* blocks, const void*, int block_size, size_t smem) {
  if (block_size < 1 || block_size > 1024) return set_error(cudaErrorInvalidValue, "occupancy: bad block size");
  int n = std::min(kMaxBlocksPerSM, kMaxThreadsPerSM / block_size);
  // shared memory per SM = the per-block opt-in limit + the 1 KiB the driver reserves per block (sm_80/sm_90)
  const size_t per_sm = static_cast<size_t>(smem_optin()) + 1024;
  n = std::min<int>(n, static_cast<int>(per_sm / (smem + 1024)));
  *blocks = n;
  return cudaSuccess;
}

cudaError_t launch(const void* func, dim3 grid, dim3 block, size_t smem, bool cooperative,
                   std::function<void()> body) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads < 1 || threads > 1024 || grid.x < 1 || grid.y < 1 || grid.z < 1 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 0x7fffffffu) {
    return set_error(cudaErrorInvalidConfiguration, "launch: invalid grid or block dimensions");
  }
  int limit = kDefaultSmemLimit;
  {
    std::lock_guard<std::mutex> lock(g_attr_mutex);
    auto it = g_max_smem.find(func);
    if (it != g_max_smem.end()) limit = std::max(limit, it->second);
  }
  if (smem > static_cast<size_t>(limit)) {
    return set_error(cudaErrorInvalidValue, "launch: " + std::to_string(smem) + " bytes of dynamic shared memory, " +
                                                "the kernel's limit is " + std::to_string(limit) +
                                                " (cudaFuncSetAttribute raises it up to the device's opt-in limit)");
  }
  const uint64_t nblocks = uint64_t{grid.x} * grid.y * grid.z;
  if (cooperative) {
    int per_sm = 0;
    occupancy(&per_sm, func, static_cast<int>(threads), smem);
    if (nblocks > static_cast<uint64_t>(per_sm) * sms()) {
      return set_error(cudaErrorCooperativeLaunchTooLarge,
                       "cooperative launch of " + std::to_string(nblocks) + " blocks, at most " +
                           std::to_string(per_sm) + " per SM x " + std::to_string(sms()) + " SMs fit");
    }
  }
  if (g_launch != nullptr) return set_error(cudaErrorLaunchFailure, "launch from inside a kernel");

  Launch L;
  L.grid = grid;
  L.block = block;
  L.cooperative = cooperative;
  L.body = std::move(body);
  uint64_t seed = 1;
  try {
    L.order = order_from_env(&seed);
  } catch (const std::exception& e) {
    return set_error(cudaErrorInvalidValue, e.what());
  }
  L.rng.seed(seed);
  g_launch = &L;
  bool ok = true;
  try {
    if (cooperative) {
      const Stacks stacks(nblocks * threads);
      std::vector<std::unique_ptr<Block>> blocks;
      for (uint64_t i = 0; i < nblocks; ++i) {
        blocks.push_back(std::make_unique<Block>());
        make_block(L, *blocks.back(), smem, static_cast<unsigned int>(i), stacks, i * threads);
      }
      ok = run_together(L, blocks);
      for (auto& b : blocks) check_stacks(L, *b);
    } else {
      const Stacks stacks(threads);  // blocks run one after another: one block's stacks, reused
      for (uint64_t i : order_of(L, nblocks)) {
        std::vector<std::unique_ptr<Block>> one;
        one.push_back(std::make_unique<Block>());
        make_block(L, *one.back(), smem, static_cast<unsigned int>(i), stacks, 0);
        ok = run_together(L, one);  // a grid barrier here has already failed the launch
        check_stacks(L, *one.back());
        if (!ok || !L.error.empty()) break;
      }
    }
  } catch (const std::exception& e) {
    fail(L, e.what());
    ok = false;
  }
  g_launch = nullptr;
  std::ostringstream s;
  s << (cooperative ? "cooperative" : "ordinary") << " grid=" << grid.x << "x" << grid.y << "x" << grid.z
    << " block=" << threads << " smem=" << smem << " block_barriers=" << L.block_barriers
    << " grid_barriers=" << L.grid_barriers << (ok ? "" : " FAILED: " + L.error);
  g_log.push_back(s.str());
  if (!ok || !L.error.empty()) return set_error(cudaErrorLaunchFailure, "kernel failed in the emulator: " + L.error);
  return cudaSuccess;
}

cudaError_t last_error(bool reset) {
  const cudaError_t e = g_last;
  if (reset) g_last = cudaSuccess;
  return e;
}

const char* error_string(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
  }
  return "unknown error";
}

std::string last_message() { return g_message; }

std::vector<std::string> take_log() {
  std::vector<std::string> out;
  out.swap(g_log);
  return out;
}

}  // namespace wcrnn_emu
