#include "direct_reader.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <stdexcept>

namespace moira {

static constexpr uint64_t kAlign = 4096;
static constexpr size_t kBounceBytes = 8u << 20;

DirectReader::DirectReader(const std::string& path, int ioThreads) : path_(path) {
#ifdef O_DIRECT
  fd_ = ::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd_ >= 0) {
    // Some filesystems accept O_DIRECT at open and refuse it at read time (EINVAL): probe once.
    void* probe = nullptr;
    if (posix_memalign(&probe, kAlign, kAlign) == 0) {
      ssize_t n = pread(fd_, probe, kAlign, 0);
      free(probe);
      if (n < 0) { ::close(fd_); fd_ = -1; }
    }
  }
  direct_ = fd_ >= 0;
#endif
  if (fd_ < 0) fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw std::runtime_error("cannot open " + path + ": " + strerror(errno));
  struct stat st;
  if (fstat(fd_, &st) == 0) size_ = (uint64_t)st.st_size;
  if (ioThreads < 1) ioThreads = 1;
  for (int i = 0; i < ioThreads; i++) threads_.emplace_back([this] { ioLoop(); });
}

DirectReader::~DirectReader() { close(); }

void DirectReader::close() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stop_) return;
    stop_ = true;
    for (auto& r : queue_) status_[r.ticket] = {FAILED, "reader closed before the read ran"};
    queue_.clear();
  }
  workCv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  doneCv_.notify_all();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

uint64_t DirectReader::submit(uint64_t offset, uint64_t length, uint8_t* dst, bool urgent) {
  std::lock_guard<std::mutex> lk(mu_);
  if (stop_) throw std::runtime_error("DirectReader for " + path_ + " is closed");
  const uint64_t t = nextTicket_++;
  status_[t] = {PENDING, ""};
  if (urgent) {
    // behind earlier urgent reads (FIFO among them), in front of every prefetch
    auto it = queue_.begin();
    while (it != queue_.end() && it->urgent) ++it;
    queue_.insert(it, {t, offset, length, dst, true});
  } else {
    queue_.push_back({t, offset, length, dst, false});
  }
  workCv_.notify_one();
  return t;
}

bool DirectReader::cancel(uint64_t ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->ticket != ticket) continue;
    queue_.erase(it);
    status_.erase(ticket);
    return true;
  }
  return false;
}

bool DirectReader::promote(uint64_t ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto it = queue_.begin(); it != queue_.end(); ++it) {
    if (it->ticket != ticket) continue;
    Req r = *it;
    r.urgent = true;
    queue_.erase(it);
    auto at = queue_.begin();
    while (at != queue_.end() && at->urgent) ++at;
    queue_.insert(at, r);
    return true;
  }
  return false;
}

DirectReader::State DirectReader::state(uint64_t ticket, std::string* error) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = status_.find(ticket);
  if (it == status_.end()) {
    if (error) *error = "unknown read ticket " + std::to_string(ticket);
    return FAILED;
  }
  if (it->second.state == FAILED && error) *error = it->second.error;
  return it->second.state;
}

void DirectReader::wait(uint64_t ticket) {
  std::unique_lock<std::mutex> lk(mu_);
  doneCv_.wait(lk, [&] {
    auto it = status_.find(ticket);
    return it == status_.end() || it->second.state != PENDING;
  });
}

uint64_t DirectReader::waitAny(const std::vector<uint64_t>& tickets, int64_t timeoutMs) {
  std::unique_lock<std::mutex> lk(mu_);
  uint64_t found = 0;
  auto pred = [&] {
    for (uint64_t t : tickets) {
      auto it = status_.find(t);
      if (it == status_.end() || it->second.state != PENDING) { found = t; return true; }
    }
    return tickets.empty();
  };
  if (timeoutMs < 0) doneCv_.wait(lk, pred);
  else doneCv_.wait_for(lk, std::chrono::milliseconds(timeoutMs), pred);
  return found;
}

void DirectReader::forget(uint64_t ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = status_.find(ticket);
  if (it != status_.end() && it->second.state != PENDING) status_.erase(it);
}

void DirectReader::ioLoop() {
  void* bounce = nullptr;
  if (direct_ && posix_memalign(&bounce, kAlign, kBounceBytes) != 0) bounce = nullptr;
  for (;;) {
    Req r;
    {
      std::unique_lock<std::mutex> lk(mu_);
      workCv_.wait(lk, [&] { return stop_ || !queue_.empty(); });
      if (stop_ && queue_.empty()) break;
      r = queue_.front();
      queue_.pop_front();
    }
    std::string err = doRead(r, (uint8_t*)bounce, kBounceBytes);
    {
      std::lock_guard<std::mutex> lk(mu_);
      status_[r.ticket] = {err.empty() ? DONE : FAILED, err};
    }
    doneCv_.notify_all();
  }
  free(bounce);
}

// pread until `len` bytes or EOF; returns bytes read or -errno.
static int64_t preadFull(int fd, uint8_t* dst, uint64_t len, uint64_t off, bool direct) {
  uint64_t got = 0;
  while (got < len) {
    ssize_t n = pread(fd, dst + got, len - got, (off_t)(off + got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -(int64_t)errno;
    }
    if (n == 0) break;
    got += (uint64_t)n;
    // O_DIRECT: a short read that is not block-sized means EOF (the next offset would be unaligned)
    if (direct && (got % kAlign) != 0) break;
  }
  return (int64_t)got;
}

std::string DirectReader::doRead(const Req& r, uint8_t* bounce, size_t bounceBytes) {
  const uint64_t end = r.offset + r.length;
  auto shortRead = [&](uint64_t fileEnd) {
    return "short read of " + path_ + ": wanted bytes [" + std::to_string(r.offset) + ", " + std::to_string(end) +
           ") but the file ends at byte " + std::to_string(fileEnd) + " (truncated or replaced?)";
  };
  auto ioError = [&](int64_t e, uint64_t at) {
    return "read of " + path_ + " at offset " + std::to_string(at) + " failed: " + strerror((int)-e);
  };
  if (r.length == 0) return "";
  const bool aligned = ((uintptr_t)r.dst % kAlign) == 0 && r.offset % kAlign == 0 && r.length % kAlign == 0;
  if (!direct_ || aligned || bounce == nullptr) {
    if (direct_ && !aligned) return "internal: no bounce buffer for an unaligned O_DIRECT read";
    int64_t n = preadFull(fd_, r.dst, r.length, r.offset, direct_);
    if (n < 0) return ioError(n, r.offset);
    if ((uint64_t)n < r.length) return shortRead(r.offset + (uint64_t)n);
    return "";
  }
  // aligned superset [a0, a1) read through the bounce buffer in chunks
  const uint64_t a0 = r.offset / kAlign * kAlign;
  const uint64_t a1 = (end + kAlign - 1) / kAlign * kAlign;
  for (uint64_t p = a0; p < a1; p += bounceBytes) {
    const uint64_t want = a1 - p < bounceBytes ? a1 - p : bounceBytes;
    int64_t n = preadFull(fd_, bounce, want, p, true);
    if (n < 0) return ioError(n, p);
    const uint64_t lo = p > r.offset ? p : r.offset;
    const uint64_t hiWant = p + want < end ? p + want : end;
    const uint64_t hiGot = p + (uint64_t)n;
    if (hiGot < hiWant) return shortRead(hiGot);
    if (hiWant > lo) memcpy(r.dst + (lo - r.offset), bounce + (lo - p), hiWant - lo);
  }
  return "";
}

}  // namespace moira
