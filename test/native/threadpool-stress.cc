// Stress driver for native/threadpool.h (built and run by test/threadpool.test.ts): back-to-back
// runs whose task counts alternate between small and large, each task counting its own index.
// Every index must run exactly once per run, and run() must not return before its tasks finish
// (a task touching the run's stack after that is a use-after-return; the counters catch it too).
#include "../../native/threadpool.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const long runs = argc > 1 ? atol(argv[1]) : 200000;
  const int threads = argc > 2 ? atoi(argv[2]) : 3;
  moira::ThreadPool pool(threads);
  long wrong = 0;
  for (long it = 0; it < runs; it++) {
    const int n = it % 2 ? 2 : 7;
    std::vector<std::atomic<int>> count(n);
    for (auto& c : count) c.store(0);
    pool.run(n, [&](int i, int) { count[i].fetch_add(1); });
    for (int i = 0; i < n; i++) if (count[i].load() != 1) wrong++;
  }
  printf("%ld runs, %ld wrong task counts\n", runs, wrong);
  return wrong == 0 ? 0 : 1;
}
