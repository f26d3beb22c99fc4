// Asynchronous positional reads on a few native I/O threads, with O_DIRECT where the filesystem
// allows it (bypassing the page cache, so expert loads do not evict what the arena already holds).
// O_DIRECT needs 4 KiB-aligned offset, length and address: unaligned requests read the aligned
// superset into a per-thread aligned bounce buffer and copy out the requested bytes.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace moira {

class DirectReader {
 public:
  enum State { PENDING = 0, DONE = 1, FAILED = 2 };
  // Throws std::runtime_error if the file cannot be opened.
  DirectReader(const std::string& path, int ioThreads);
  ~DirectReader();
  bool direct() const { return direct_; }
  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // dst must stay valid until the ticket completes (the binding keeps the JS buffer referenced).
  // urgent: queued in front of every non-urgent read (a layer is waiting for it).
  uint64_t submit(uint64_t offset, uint64_t length, uint8_t* dst, bool urgent = false);
  // Removes a read no thread has started: true when no byte will be written (the ticket is gone).
  bool cancel(uint64_t ticket);
  // Moves a queued read to the front: true when it was still queued.
  bool promote(uint64_t ticket);
  // State of a ticket; error filled for FAILED. Unknown tickets are FAILED with a message.
  State state(uint64_t ticket, std::string* error);
  void wait(uint64_t ticket);
  // Blocks until one of tickets is no longer pending (or timeoutMs passes: returns 0). 0 = none.
  uint64_t waitAny(const std::vector<uint64_t>& tickets, int64_t timeoutMs);
  void forget(uint64_t ticket);
  void close();

 private:
  struct Req { uint64_t ticket, offset, length; uint8_t* dst; bool urgent; };
  struct Status { State state; std::string error; };
  void ioLoop();
  std::string doRead(const Req& r, uint8_t* bounce, size_t bounceBytes);

  std::string path_;
  int fd_ = -1;
  bool direct_ = false;
  uint64_t size_ = 0;
  std::mutex mu_;
  std::condition_variable workCv_, doneCv_;
  std::deque<Req> queue_;
  std::unordered_map<uint64_t, Status> status_;
  uint64_t nextTicket_ = 1;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace moira
